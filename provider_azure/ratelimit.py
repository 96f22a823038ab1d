"""Stay under Key Vault's service limit: 4,000 GETs per 10 s per vault (secrets, keys, certs).

A token bucket of 2,000 refilled at 200/s can never pass more than 4,000 requests in any 10 s
window, so a burst of mounts (a rollout, a rotation tick) queues here instead of drawing 429s
that would slow every pod on the node.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable


class TokenBucket:
    def __init__(
        self,
        capacity: float = 2000,
        rate: float = 200,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.capacity = capacity
        self.rate = rate
        self._clock = clock
        self._sleep = sleep
        self._tokens = capacity
        self._stamp = clock()
        self._lock = asyncio.Lock()

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self.capacity, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now

    async def acquire(self) -> None:
        """Take one token, waiting (in order of arrival) while the bucket is empty."""
        if not self._lock.locked():
            # nobody waits and a token is there: take it without the lock's round trip
            self._refill()
            if self._tokens >= 1:
                self._tokens -= 1
                return
        async with self._lock:
            self._refill()
            if self._tokens < 1:
                await self._sleep((1 - self._tokens) / self.rate)
                self._refill()
                # We slept for exactly the deficit; float rounding must not make us wait again.
                self._tokens = max(self._tokens, 1.0)
            self._tokens -= 1
