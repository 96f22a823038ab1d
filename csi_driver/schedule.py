"""When each mounted volume is next refreshed: the interval with jitter, backoff after a
failure, and the throttle on kubelet's republishes. Pure; tested on fake time."""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass, field

from .mounts import target_key

JITTER = 0.1
BACKOFF_BASE = 1.0


@dataclass
class VolumeState:
    failures: int = 0
    retry_at: float = 0.0
    last_attempt: float = -math.inf
    force_seen: str = ""


@dataclass
class Schedule:
    interval: float
    rng: Callable[[], float] = random.random
    states: dict[str, VolumeState] = field(default_factory=dict)

    def state(self, target: str) -> VolumeState:
        return self.states.setdefault(target_key(target), VolumeState())

    def jittered(self) -> float:
        """The interval ± 10 %, so nodes started together do not burst together."""
        return float(self.interval * (1 - JITTER + 2 * JITTER * self.rng()))

    def backoff(self, failures: int) -> float:
        """1, 2, 4, … s (± 10 %), never beyond the interval."""
        base = min(BACKOFF_BASE * 2.0 ** max(failures - 1, 0), self.interval)
        return base * (1 - JITTER + 2 * JITTER * self.rng())

    def failed(self, target: str, now: float) -> float:
        s = self.state(target)
        s.failures += 1
        s.retry_at = now + self.backoff(s.failures)
        return s.retry_at

    def succeeded(self, target: str) -> None:
        s = self.state(target)
        s.failures, s.retry_at = 0, 0.0

    def due(self, target: str, now: float, full_tick: bool) -> bool:
        """Full tick: every volume not waiting out a backoff. Retry wake-up: the backed-off."""
        s = self.state(target)
        if s.failures:
            return s.retry_at <= now
        return full_tick

    def taken(self, target: str, now: float) -> None:
        """A backed-off volume is being retried: whatever happens to it (skipped, busy), the
        loop must not wake for it again before another backoff."""
        s = self.state(target)
        if s.failures:
            s.retry_at = now + self.backoff(s.failures)

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
        return now - s.last_attempt >= self.interval

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
