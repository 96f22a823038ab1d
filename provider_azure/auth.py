"""Credentials (azure-identity `.aio`) and Key Vault clients, reused across mounts.

Upstream builds a new credential and client on every mount, so every mount pays a challenge,
instance discovery, OpenID configuration and a token. We keep one credential and one client
per (identity, vault): tokens and challenges are cached by the SDK. The cache key carries the
proof of identity (a digest of the client secret, or of the exact service-account token), so a
mount never rides on a token another proof earned.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from azure.core.credentials_async import AsyncTokenCredential
from azure.identity.aio import (
    ClientAssertionCredential,
    ClientSecretCredential,
    ManagedIdentityCredential,
)

from .caches import BoundedLRU
from .http_transport import make_transport
from .identity import Identity, IdentityMode
from .keyvault import ClientOptions, VaultClient
from .parameters import MountParameters
from .ratelimit import TokenBucket
from .token_proxy import ProxyTransport, SniResolver, TokenProxy, configure


@dataclass
class _Assertion:
    """The newest service-account token for one identity; the credential reads it on refresh."""

    token: str = field(repr=False)

    def __call__(self) -> str:
        return self.token


def build_credential(
    identity: Identity, authority: str, token_proxy: TokenProxy | None = None
) -> tuple[AsyncTokenCredential, _Assertion | None]:
    if identity.mode is IdentityMode.MANAGED_IDENTITY:
        if identity.user_assigned_identity_id:
            return (
                ManagedIdentityCredential(
                    client_id=identity.user_assigned_identity_id, transport=make_transport()
                ),
                None,
            )
        return ManagedIdentityCredential(transport=make_transport()), None
    if identity.mode is IdentityMode.IDENTITY_BINDING:
        proxy = token_proxy or configure("", "")
        proxy.check()
        holder = _Assertion(identity.assertion)
        credential = ClientAssertionCredential(
            identity.tenant_id,
            identity.client_id,
            holder,
            authority=authority,
            transport=ProxyTransport(proxy),
        )
        return credential, holder
    if identity.mode is IdentityMode.WORKLOAD_IDENTITY:
        holder = _Assertion(identity.assertion)
        return (
            ClientAssertionCredential(
                identity.tenant_id,
                identity.client_id,
                holder,
                authority=authority,
                transport=make_transport(),
            ),
            holder,
        )
    return (
        ClientSecretCredential(
            identity.tenant_id,
            identity.client_id,
            identity.client_secret,
            authority=authority,
            transport=make_transport(),
        ),
        None,
    )


@dataclass
class _Lease:
    """A cached object with the mounts using it: an evicted one is closed when the last
    of them is done, never under a fetch in flight."""

    thing: VaultClient | AsyncTokenCredential
    users: int = 0
    retired: bool = False

    async def release(self) -> None:
        self.users -= 1
        if self.retired and self.users == 0:
            await _close(self.thing)

    async def retire(self) -> None:
        self.retired = True
        if self.users == 0:
            await _close(self.thing)


async def _close(thing: VaultClient | AsyncTokenCredential) -> None:
    await asyncio.gather(thing.close(), return_exceptions=True)


def identity_service(params: MountParameters, token_proxy: TokenProxy | None = None) -> str:
    """The service that issues this mount's tokens, as error messages name it."""
    if params.identity.mode is IdentityMode.IDENTITY_BINDING and token_proxy is not None:
        return token_proxy.describe()
    if params.identity.mode is IdentityMode.MANAGED_IDENTITY:
        return "the managed identity endpoint (IMDS)"
    return f"Entra ID ({params.cloud.authority_host})"


class ClientCache:
    """One credential per identity and one VaultClient per (identity, vault), for the process.

    All three maps are bounded (least recently used dropped): identities, because client
    secrets rotate and service accounts come and go; clients and rate limiters, because a pod
    author chooses the vault name. A dropped credential or client is closed once no mount is
    using it. Sizes and evictions are exported as `provider_cache_*` metrics."""

    def __init__(
        self,
        options: ClientOptions | None = None,
        max_identities: int = 256,
        max_clients: int = 64,
        max_vaults: int = 1024,
        token_proxy: TokenProxy | None = None,
    ) -> None:
        self.options = options or ClientOptions()
        # `--token-proxy-url` / `--sni-name`; upstream's defaults when not given.
        self.sni = SniResolver(token_proxy or configure("", ""))
        self._credentials: BoundedLRU[tuple[str, ...], tuple[_Lease, _Assertion | None]] = (
            BoundedLRU("credentials", max_identities)
        )
        self._clients: BoundedLRU[tuple[tuple[str, ...], str], _Lease] = BoundedLRU(
            "vault clients", max_clients
        )
        # Key Vault's limit is per vault, whichever identity asks.
        self._limiters: BoundedLRU[str, TokenBucket] = BoundedLRU("rate limiters", max_vaults)
        self._lock = asyncio.Lock()
        self._closing: set[asyncio.Future[None]] = set()
        self.credentials_built = 0

    @property
    def token_proxy(self) -> TokenProxy:
        return self.sni.current

    def compute_sni(self) -> None:
        """Without `--sni-name`, start computing it (upstream does it at start)."""
        self.sni.start()

    def caches(self) -> tuple[BoundedLRU[Any, Any], ...]:
        return (self._credentials, self._clients, self._limiters)

    @contextlib.asynccontextmanager
    async def lease(
        self, params: MountParameters, vault_name: str = ""
    ) -> AsyncIterator[VaultClient]:
        """The client for this mount's identity and vault (the SPC's, or `vault_name`), kept
        open while the mount uses it."""
        if params.identity.mode is IdentityMode.IDENTITY_BINDING:
            await self.sni.ready()
        async with self._lock:
            credential = self._credential(params)
            client = self._client(params, vault_name or params.vault_name)
            credential.users += 1
            client.users += 1
        try:
            assert isinstance(client.thing, VaultClient)
            yield client.thing
        finally:
            await client.release()
            await credential.release()

    def _credential(self, params: MountParameters) -> _Lease:
        authority = params.cloud.authority_host
        key = params.identity.cache_key(authority)
        entry = self._credentials.get(key)
        if entry is None:
            credential, holder = build_credential(params.identity, authority, self.token_proxy)
            entry = (_Lease(credential), holder)
            self.credentials_built += 1
            for old_key, (old, _) in self._credentials.put(key, entry):
                self._retire(old, *(k for k in self._clients if k[0] == old_key))
        lease, holder = entry
        if holder is not None:
            holder.token = params.identity.assertion
        return lease

    def _client(self, params: MountParameters, vault_name: str) -> _Lease:
        key = params.identity.cache_key(params.cloud.authority_host)
        vault_url = params.url_of(vault_name)
        client_key = (key, vault_url)
        lease = self._clients.get(client_key)
        if lease is None:
            limiter = self._limiters.get(vault_url)
            if limiter is None:
                limiter = TokenBucket()
                self._limiters.put(vault_url, limiter)
            credential = self._credentials.get(key)
            assert credential is not None
            thing = credential[0].thing
            assert not isinstance(thing, VaultClient)
            lease = _Lease(
                VaultClient(
                    vault_name,
                    vault_url,
                    thing,
                    self.options,
                    limiter,
                    identity_service=identity_service(params, self.token_proxy),
                )
            )
            for _, old in self._clients.put(client_key, lease):
                self._retire(old)
        return lease

    def _retire(self, lease: _Lease, *client_keys: tuple[tuple[str, ...], str]) -> None:
        """Close `lease` (and the clients built on it) once unused, without holding the lock."""
        leases = [lease, *(c for c in map(self._clients.pop, client_keys) if c is not None)]
        for item in leases:
            task = asyncio.ensure_future(item.retire())
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    async def close(self) -> None:
        self.sni.close()
        leases = [lease for _, lease in self._clients.clear()]
        leases += [lease for _, (lease, _) in self._credentials.clear()]
        self._limiters.clear()
        await asyncio.gather(*(_close(lease.thing) for lease in leases), return_exceptions=True)
        await asyncio.gather(*self._closing, return_exceptions=True)
