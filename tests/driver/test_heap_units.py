"""heap.HeapTrim: one trim at the end of a burst, never while an operation is in flight."""

from __future__ import annotations

import asyncio

from csi_driver.heap import HeapTrim, _malloc_trim


async def _turns(n: int = 3) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


async def test_one_trim_after_a_burst_none_while_busy() -> None:
    trims: list[int] = []
    heap = HeapTrim(quiet=0, trim=lambda: trims.append(1))
    release = asyncio.Event()

    async def op() -> None:
        with heap.busy():
            await release.wait()

    ops = [asyncio.create_task(op()) for _ in range(5)]
    await _turns()
    assert trims == []  # all in flight
    release.set()
    await asyncio.gather(*ops)
    await _turns()
    assert trims == [1]  # once, at the end
    with heap.busy():
        await _turns()
        assert trims == [1]
    await _turns()
    assert trims == [1, 1]


async def test_a_new_operation_cancels_the_pending_trim() -> None:
    trims: list[int] = []
    heap = HeapTrim(quiet=0, trim=lambda: trims.append(1))
    with heap.busy():
        pass
    with heap.busy():  # before the loop ran the timer
        await _turns()
        assert trims == []
    await _turns()
    assert trims == [1]


def test_glibc_trim_is_found_and_callable() -> None:
    trim = _malloc_trim()
    assert trim is not None  # this machine is glibc (Debian)
    trim()
