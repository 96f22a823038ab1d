"""The single flight's rules, with fake calls (pure logic: no provider, no cluster)."""

from __future__ import annotations

import asyncio

import pytest

from csi_driver.single_flight import SingleFlight


class _Call:
    """A call that waits for `release` and counts how often it ran."""

    def __init__(self, value: str = "v", error: Exception | None = None) -> None:
        self.value, self.error = value, error
        self.runs = 0
        self.release = asyncio.Event()

    async def __call__(self) -> str:
        self.runs += 1
        await self.release.wait()
        if self.error is not None:
            raise self.error
        return f"{self.value}{self.runs}"


async def test_concurrent_callers_of_one_key_share_one_call() -> None:
    flights: SingleFlight[str, str] = SingleFlight()
    call = _Call()
    waiters = [asyncio.ensure_future(flights.run("k", call)) for _ in range(20)]
    await asyncio.sleep(0)
    call.release.set()
    results = await asyncio.gather(*waiters)
    assert call.runs == 1 and flights.calls == 1
    assert [v for v, _ in results] == ["v1"] * 20
    assert [shared for _, shared in results] == [False] + [True] * 19
    assert len(flights) == 0  # nothing kept without `reuse`


async def test_different_keys_call_separately() -> None:
    flights: SingleFlight[str, str] = SingleFlight()
    a, b = _Call("a"), _Call("b")
    a.release.set()
    b.release.set()
    assert list(await asyncio.gather(flights.run("a", a), flights.run("b", b))) == [
        ("a1", False),
        ("b1", False),
    ]


async def test_a_failure_reaches_every_waiter_and_is_not_kept() -> None:
    flights: SingleFlight[str, str] = SingleFlight()
    error = RuntimeError("provider said no")
    call = _Call(error=error)
    waiters = [asyncio.ensure_future(flights.run("k", call, reuse=60)) for _ in range(5)]
    await asyncio.sleep(0)
    call.release.set()
    outcomes = await asyncio.gather(*waiters, return_exceptions=True)
    assert outcomes == [error] * 5 and call.runs == 1
    call.error = None
    assert await flights.run("k", call, reuse=60) == ("v2", False)  # the next one calls again


async def test_a_caller_that_gives_up_does_not_cancel_the_call_for_the_others() -> None:
    flights: SingleFlight[str, str] = SingleFlight()
    call = _Call()
    leader = asyncio.ensure_future(flights.run("k", call))
    await asyncio.sleep(0)
    follower = asyncio.ensure_future(flights.run("k", call))
    await asyncio.sleep(0)
    leader.cancel()
    await asyncio.sleep(0)
    call.release.set()
    assert await follower == ("v1", True)
    assert leader.cancelled() and call.runs == 1


async def test_a_finished_result_serves_only_within_reuse() -> None:
    now = [100.0]
    flights: SingleFlight[str, str] = SingleFlight(clock=lambda: now[0])
    call = _Call()
    call.release.set()
    assert await flights.run("k", call, reuse=6) == ("v1", False)
    now[0] = 105.9  # reuse counts from when the call started
    assert await flights.run("k", call, reuse=6) == ("v1", True)
    assert await flights.run("k", call, reuse=6, asked_at=105.9) == ("v1", True)
    now[0] = 106.0
    assert await flights.run("k", call, reuse=6, asked_at=105.5) == ("v1", True)  # a tick's start
    assert await flights.run("k", call, reuse=6) == ("v2", False)
    assert await flights.run("other", call) == ("v3", False)
    now[0] = 113.0
    flights.prune()
    assert len(flights) == 0


@pytest.mark.parametrize("reuse", [0.0, 6.0])
async def test_the_count_does_not_depend_on_arrival_order_within_a_flight(reuse: float) -> None:
    flights: SingleFlight[int, str] = SingleFlight()
    call = _Call()
    first = [asyncio.ensure_future(flights.run(1, call, reuse)) for _ in range(3)]
    await asyncio.sleep(0)
    later = [asyncio.ensure_future(flights.run(1, call, reuse)) for _ in range(3)]
    await asyncio.sleep(0)
    call.release.set()
    await asyncio.gather(*first, *later)
    assert call.runs == 1
