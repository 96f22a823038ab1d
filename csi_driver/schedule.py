"""When each mounted volume is next refreshed: the interval with jitter, backoff after a
failure, and the throttle on kubelet's republishes. Pure; tested on fake time.

A volume's interval is the global one unless its SecretProviderClass sets its own
(intervals.py). Each interval in use has its own tick clock, so volumes of one SPC stay due
together (and can share one provider call), whatever the other SPCs ask for.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Collection
from dataclasses import dataclass, field

from .mounts import target_key

JITTER = 0.1
BACKOFF_BASE = 1.0

# what a tick means: True every volume, False only the backed-off, else the intervals ticking
Ticking = bool | Collection[float]


@dataclass
class VolumeState:
    failures: int = 0
    retry_at: float = 0.0
    last_attempt: float = -math.inf
    force_seen: str = ""
    interval: float | None = None  # the SPC's own (None: the global --rotation-poll-interval)
    interval_seen: str | None = None  # the annotation value last judged (one warning a value)


@dataclass
class Schedule:
    interval: float
    rng: Callable[[], float] = random.random
    states: dict[str, VolumeState] = field(default_factory=dict)
    clocks: dict[float, float] = field(default_factory=dict)  # interval → its next tick

    def state(self, target: str) -> VolumeState:
        return self.states.setdefault(target_key(target), VolumeState())

    def interval_of(self, target: str) -> float:
        own = self.state(target).interval
        return self.interval if own is None else own

    def set_interval(self, target: str, seconds: float | None, now: float) -> None:
        """The volume's own interval; a new one starts its clock one interval from now."""
        self.state(target).interval = seconds
        if seconds is not None and seconds not in self.clocks:
            self.clocks[seconds] = now + self.jittered(seconds)

    def jittered(self, interval: float | None = None) -> float:
        """The interval ± 10 %, so nodes started together do not burst together."""
        base = self.interval if interval is None else interval
        return float(base * (1 - JITTER + 2 * JITTER * self.rng()))

    def start(self, now: float) -> None:
        self.clocks[self.interval] = now + self.jittered()

    def next_tick(self) -> float:
        return min(self.clocks.values(), default=math.inf)

    def begin(self, now: float) -> set[float]:
        """The intervals whose tick has come; each clock moves on by its own interval."""
        ticking = {iv for iv, at in self.clocks.items() if at <= now}
        for iv in ticking:
            self.clocks[iv] = now + self.jittered(iv)
        return ticking

    def backoff(self, failures: int, interval: float | None = None) -> float:
        """1, 2, 4, … s (± 10 %), never beyond the interval."""
        cap = self.interval if interval is None else interval
        base = min(BACKOFF_BASE * 2.0 ** max(failures - 1, 0), cap)
        return base * (1 - JITTER + 2 * JITTER * self.rng())

    def failed(self, target: str, now: float) -> float:
        s = self.state(target)
        s.failures += 1
        s.retry_at = now + self.backoff(s.failures, self.interval_of(target))
        return s.retry_at

    def succeeded(self, target: str) -> None:
        s = self.state(target)
        s.failures, s.retry_at = 0, 0.0

    def due(self, target: str, now: float, full_tick: Ticking) -> bool:
        """Its interval's tick: every volume not waiting out a backoff. Retry wake-up: the
        backed-off."""
        s = self.state(target)
        if s.failures:
            return s.retry_at <= now
        if isinstance(full_tick, bool):
            return full_tick
        return self.interval_of(target) in full_tick

    def taken(self, target: str, now: float) -> None:
        """A backed-off volume is being retried: whatever happens to it (skipped, busy), the
        loop must not wake for it again before another backoff."""
        s = self.state(target)
        if s.failures:
            s.retry_at = now + self.backoff(s.failures, self.interval_of(target))

    def next_retry(self) -> float:
        return min((s.retry_at for s in self.states.values() if s.failures), default=math.inf)

    def republish_allowed(self, target: str, now: float) -> bool:
        """Kubelet's republishes reach the provider at most once an interval per volume."""
        s = self.state(target)
        if s.last_attempt == -math.inf:
            s.last_attempt = now  # just mounted, or the driver restarted: wait an interval
            return False
        if s.failures:
            return s.retry_at <= now
        return now - s.last_attempt >= self.interval_of(target)

    def forced(self, target: str, token: str) -> bool:
        """A new value of the force-refresh annotation: refresh alone, now (once per value)."""
        s = self.state(target)
        forced = bool(token) and token != s.force_seen
        s.force_seen = token
        return forced

    def forget(self, live: set[str]) -> None:
        for key in list(self.states):
            if key not in live:
                del self.states[key]
        used = {s.interval for s in self.states.values()}
        for iv in list(self.clocks):
            if iv != self.interval and iv not in used:
                del self.clocks[iv]
