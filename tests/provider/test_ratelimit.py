"""Key Vault's per-vault budget, on fake time."""

from __future__ import annotations

import asyncio

from provider_azure.ratelimit import TokenBucket


class FakeTime:
    def __init__(self) -> None:
        self.now = 0.0

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_never_more_than_4000_in_any_10_seconds() -> None:
    t = FakeTime()
    bucket = TokenBucket(clock=t.clock, sleep=t.sleep)
    stamps: list[float] = []

    async def run() -> None:
        for _ in range(9000):
            await bucket.acquire()
            stamps.append(t.now)

    asyncio.run(run())
    assert stamps[1999] == 0.0  # a burst of 2,000 passes at once
    j = 0
    for i, s in enumerate(stamps):
        while stamps[j] <= s - 10:
            j += 1
        assert i - j + 1 <= 4000
    assert stamps[-1] <= (9000 - 2000) / 200 + 1e-6


def test_refills_while_idle() -> None:
    t = FakeTime()
    bucket = TokenBucket(capacity=2, rate=1, clock=t.clock, sleep=t.sleep)

    async def run() -> list[float]:
        out = []
        for _ in range(3):
            await bucket.acquire()
            out.append(t.now)
        t.now += 5
        await bucket.acquire()
        out.append(t.now)
        return out

    assert asyncio.run(run()) == [0.0, 0.0, 1.0, 6.0]
