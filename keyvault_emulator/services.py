"""What the request handlers may use: the emulator's state and shared machinery, without the
HTTP front that routes to them (so no handler module imports the server)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from .faults import Faults, RequestLog
from .jwks import JwksCache
from .store import Store
from .throttle import Throttle
from .tls import Pki
from .tokens import TokenAuthority

# The secret the App Service style managed-identity endpoint expects in X-IDENTITY-HEADER.
IDENTITY_HEADER = "emulator-identity-header"


@dataclass
class Services:
    store: Store
    pki: Pki
    authority: TokenAuthority
    latency_ms: int = 0
    on_change: Callable[[], None] | None = None
    faults: Faults = field(default_factory=Faults)
    requests: RequestLog = field(default_factory=RequestLog)
    jwks_cache: JwksCache = field(default_factory=JwksCache)
    throttle: Throttle = field(default_factory=Throttle)
    identity_header: str = IDENTITY_HEADER

    @classmethod
    def create(
        cls,
        store: Store,
        pki: Pki,
        latency_ms: int = 0,
        on_change: Callable[[], None] | None = None,
    ) -> Services:
        authority = TokenAuthority(pki.signing_key, pki.signing_cert_der)
        return cls(store, pki, authority, latency_ms, on_change)

    def changed(self) -> None:
        """Stored state changed (the persister, if any, saves it soon)."""
        if self.on_change is not None:
            self.on_change()
