"""One call in flight per key: callers that ask while it runs get its outcome, not a call of
their own.

The call runs in a task of its own, so a caller that gives up (kubelet cancelled its publish)
does not cancel it for the others; every caller gets the same result or the same exception.
`reuse` seconds (rotation's rounds, see rotation.py): a finished call's result also serves
callers that come within that long after it started; 0 (publishes): only a call still in
flight is joined, never a finished one. Bounded: one entry per key in flight, plus one per key
whose result is kept, dropped once its `reuse` has passed.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Hashable
from functools import partial
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class SingleFlight(Generic[K, V]):
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._flights: dict[K, asyncio.Future[V]] = {}
        self._kept: dict[K, tuple[float, V]] = {}  # key → (reusable until, result)
        self.calls = 0  # calls made (for tests and logs)

    async def run(
        self,
        key: K,
        call: Callable[[], Awaitable[V]],
        reuse: float = 0.0,
        asked_at: float | None = None,
    ) -> tuple[V, bool]:
        """The outcome of `call` or of the same key's call in flight (or kept): (result,
        True when another caller's call gave it). `asked_at`: when the caller's need arose
        (a tick's start, before its planning), for the kept result's age; default now."""
        flight = self._flights.get(key)
        if flight is not None:
            return await asyncio.shield(flight), True
        kept = self._kept.get(key)
        if kept is not None and (self.clock() if asked_at is None else asked_at) < kept[0]:
            return kept[1], True
        self._kept.pop(key, None)
        self.calls += 1
        flight = asyncio.ensure_future(call())
        self._flights[key] = flight
        flight.add_done_callback(partial(self._landed, key, self.clock() + reuse, reuse > 0))
        return await asyncio.shield(flight), False

    def _landed(self, key: K, until: float, keep: bool, flight: asyncio.Future[V]) -> None:
        if self._flights.get(key) is flight:
            del self._flights[key]
        if flight.cancelled() or flight.exception() is not None:  # retrieved: never "unseen"
            return
        if keep:
            self._kept[key] = (until, flight.result())

    def prune(self) -> None:
        """Drops kept results whose time has passed (call now and then: a tick)."""
        now = self.clock()
        for key in [k for k, (until, _) in self._kept.items() if until <= now]:
            del self._kept[key]

    def __len__(self) -> int:
        return len(self._flights) + len(self._kept)
