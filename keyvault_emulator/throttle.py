"""Key Vault's service limit, optionally enforced: at most `limit` requests per vault in a
sliding window (Key Vault: 4,000 GETs per 10 s), then 429 `Throttled` with `Retry-After`."""

from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass, field

from .errors import KeyVaultError


@dataclass
class Throttle:
    limit: int = 0  # 0: off
    window: float = 10.0
    _seen: dict[str, deque[float]] = field(default_factory=dict)

    def configure(self, limit: int, window: float) -> None:
        if limit < 0 or window <= 0:
            raise ValueError("limit must be >= 0 and window_seconds > 0")
        self.limit, self.window = limit, window
        self._seen.clear()

    def check(self, vault: str) -> None:
        """Counts one request to `vault`; raises the 429 when over the limit."""
        if not self.limit:
            return
        now = time.monotonic()
        seen = self._seen.setdefault(vault, deque())
        while seen and seen[0] <= now - self.window:
            seen.popleft()
        if len(seen) >= self.limit:
            retry = max(1, math.ceil(seen[0] + self.window - now))
            raise KeyVaultError(
                429,
                "Throttled",
                "Request was not processed because too many requests were received. Reason: "
                f"a maximum of {self.limit} requests per {self.window:g} seconds per vault "
                "was exceeded.",
                headers={"Retry-After": str(retry)},
            )
        seen.append(now)
