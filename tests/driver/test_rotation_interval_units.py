"""A SecretProviderClass's own rotation interval, on fake time: the annotation's rules (the
bad-input table of docs/rotation.md, one row a case), per-interval tick clocks, the wake-up that
finds a new class's interval, one warning per value, and the republish throttle."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from csi_driver.events import PodRef
from csi_driver.intervals import INTERVAL_ANNOTATION, INVALID_INTERVAL, spc_interval
from csi_driver.kube import SecretProviderClassSpec
from csi_driver.metrics import Metrics
from csi_driver.mounts import MountTable
from csi_driver.plans import Batch, Plan
from csi_driver.rotation import Reconciler
from csi_driver.schedule import Schedule
from csi_driver.spcps import NoStatus, PodStatusRecord


def spc(value: str | None, name: str = "web") -> SecretProviderClassSpec:
    annotations = {} if value is None else {INTERVAL_ANNOTATION: value}
    return SecretProviderClassSpec("ns", name, "azure", {"keyvaultName": "kv"}, annotations)


# ---- the annotation's rules: docs/rotation.md's bad-input table, one row a case -------------

FLOOR = 60.0


@pytest.mark.parametrize(
    ("value", "seconds", "rule"),
    [
        ("", None, "not a Go duration"),
        ("ten minutes", None, "not a Go duration"),
        ("10", None, "not a Go duration"),  # Go wants a unit
        ("0", None, "must be positive"),
        ("-5m", None, "must be positive"),
        ("169h", None, "must be at most"),
        ("30s", FLOOR, "below the driver's --min-rotation-poll-interval; using 60s"),
        ("1" * 100 + "s", None, "not a Go duration"),  # too long to parse; echo cut
    ],
)
def test_bad_values_name_the_annotation_and_the_class(
    value: str, seconds: float | None, rule: str
) -> None:
    choice = spc_interval(spc(value), FLOOR)
    assert choice.seconds == seconds
    assert rule in choice.warning
    assert f"annotation {INTERVAL_ANNOTATION}=" in choice.warning
    assert "secretproviderclass ns/web" in choice.warning
    assert len(choice.warning) < 400  # the value is echoed at most 64 characters
    if seconds is None:
        assert choice.warning.endswith("using --rotation-poll-interval")


@pytest.mark.parametrize(
    ("value", "seconds"), [(None, None), ("10m", 600.0), ("1h30m", 5400.0), ("60s", 60.0)]
)
def test_good_values(value: str | None, seconds: float | None) -> None:
    choice = spc_interval(spc(value), FLOOR)
    assert (choice.seconds, choice.warning) == (seconds, "")


# ---- per-interval clocks ---------------------------------------------------------------------


def test_each_interval_ticks_on_its_own_clock() -> None:
    s = Schedule(10, rng=lambda: 0.5)
    s.start(0)
    s.set_interval("/a", 30, now=0)  # a class asking for 30 s
    assert s.next_tick() == 10
    assert s.begin(10) == {10}
    assert s.due("/b", 10, {10}) and not s.due("/a", 10, {10})
    assert s.begin(20) == {10}
    assert s.begin(30) == {10, 30}
    assert s.due("/a", 30, {10, 30})
    assert s.backoff(9, s.interval_of("/a")) == 30  # backoff capped by the volume's interval
    s.forget({"/b"})  # the 30 s volume went: its clock goes too, the global one stays
    assert set(s.clocks) == {10}


def test_republish_throttle_follows_the_class_interval() -> None:
    s = Schedule(120, rng=lambda: 0.5)
    s.set_interval("/a", 600, now=0)
    assert not s.republish_allowed("/a", 1000)  # first sight
    assert not s.republish_allowed("/a", 1120)  # the global interval is not enough
    assert s.republish_allowed("/a", 1600)


# ---- the reconciler's loop on fake time ------------------------------------------------------


class _Spcs:
    def __init__(self) -> None:
        self.values: dict[str, str | None] = {}

    async def get(self, namespace: str, name: str) -> SecretProviderClassSpec:
        return spc(self.values.get(name), name)


class _Due:
    """A PlanSource recording which volumes each tick found due (and planning none)."""

    def __init__(self, clock: list[float]) -> None:
        self.clock = clock
        self.seen: list[tuple[float, list[str]]] = []

    async def plans(self, due: Sequence[PodStatusRecord]) -> Batch:
        self.seen.append((self.clock[0], sorted(r.pod_name for r in due)))
        return Batch()

    async def prepare(self) -> None:
        return None

    async def request(self, plan: Plan) -> tuple[str, str]:
        raise AssertionError("no plans")


class _Events:
    def __init__(self) -> None:
        self.got: list[tuple[str, str, str]] = []

    async def record(self, pod: PodRef, kind: str, reason: str, message: str) -> None:
        self.got.append((pod.name, kind, reason))


def record(pod: str, spc_name: str) -> PodStatusRecord:
    target = f"/var/lib/kubelet/pods/{pod}/volumes/kubernetes.io~csi/v/mount"
    return PodStatusRecord(pod, "ns", pod + "-uid", spc_name, target, "n", True, {})


def world(interval: float, floor: float, *records: PodStatusRecord) -> Any:
    now = [0.0]
    mounts = MountTable()
    for r in records:
        mounts.add(r)
    spcs, plans, events = _Spcs(), _Due(now), _Events()
    stop_at = [100.0]

    async def sleep(d: float) -> None:
        now[0] += d
        if now[0] > stop_at[0]:
            raise asyncio.CancelledError

    r = Reconciler(
        mounts=mounts,
        providers=None,  # type: ignore[arg-type]
        spcs=spcs,
        metrics=Metrics(CollectorRegistry()),
        plans=plans,
        events=events,
        status=NoStatus(),
        interval=interval,
        min_interval=floor,
        clock=lambda: now[0],
        sleep=sleep,
        rng=lambda: 0.5,
    )
    return r, spcs, plans, events, stop_at


async def test_classes_tick_on_their_own_interval() -> None:
    r, spcs, plans, events, _ = world(20, 5, record("fast", "fast"), record("slow", "slow"))
    r.mounts.add(record("plain", "plain"))
    spcs.values = {"fast": "10s", "slow": "50s"}
    with pytest.raises(asyncio.CancelledError):
        await r.run()
    ticks = [(t, pods) for t, pods in plans.seen if pods]
    by_pod = {p: [t for t, pods in ticks if p in pods] for p in ("fast", "plain", "slow")}
    # found at the first wake (min interval 5 s): fast every 10 s, slow every 50 s from then
    assert by_pod["fast"] == [15, 25, 35, 45, 55, 65, 75, 85, 95]
    assert by_pod["plain"] == [20, 40, 60, 80, 100]
    assert by_pod["slow"] == [55]
    assert events.got == []


async def test_a_new_short_interval_is_found_within_seconds() -> None:
    """Global 120 s: the loop looks every 5 s (LOOK_EVERY), so a class asking for 10 s gets its
    first refresh ~15 s after the mount, not 120 s."""
    r, spcs, plans, _events, stop_at = world(120, 1, record("fast", "fast"))
    spcs.values = {"fast": "10s"}
    stop_at[0] = 40
    with pytest.raises(asyncio.CancelledError):
        await r.run()
    assert [t for t, pods in plans.seen if pods] == [15, 25, 35]


async def test_an_invalid_value_warns_each_pod_once_per_value() -> None:
    r, spcs, plans, events, stop_at = world(10, 5, record("a", "web"), record("b", "web"))
    spcs.values = {"web": "often"}
    stop_at[0] = 30
    with pytest.raises(asyncio.CancelledError):
        await r.run()
    assert events.got == [("a", "Warning", INVALID_INTERVAL), ("b", "Warning", INVALID_INTERVAL)]
    # it fell back to the global interval
    assert [t for t, pods in plans.seen if pods] == [10, 20, 30]
    spcs.values = {"web": "0"}  # the class changed: one more warning each
    await r.intervals.resolve(r.mounts.records())
    await r.intervals.resolve(r.mounts.records())
    assert len(events.got) == 4
    spcs.values = {"web": "1m"}  # fixed: nothing said, interval taken
    await r.intervals.resolve(r.mounts.records())
    assert len(events.got) == 4
    assert r.schedule.interval_of(record("a", "web").target_path) == 60


async def test_republish_honours_the_class_interval() -> None:
    from csi_driver.volumes import PublishRequest

    rec = record("a", "web")
    r, spcs, _plans, _events, _ = world(10, 5, rec)
    spcs.values = {"web": "5m"}
    asked: list[float] = []

    async def mount(*a: Any, **kw: Any) -> Any:
        asked.append(r.clock())
        raise AssertionError("stop here")

    r._mount = mount  # type: ignore[method-assign]
    req = PublishRequest("vol", rec.target_path, True, True, {}, {})
    await r.republish(req)  # first sight starts the clock
    r.clock = lambda: 200.0  # global interval long passed, the class's 5 m not
    await r.republish(req)
    assert asked == []
    r.clock = lambda: 300.0
    with pytest.raises(AssertionError):
        await r.republish(req)
    assert asked == [300.0]
