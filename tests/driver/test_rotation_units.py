"""The reconciler's timing and grouping rules, on fake time (no sleeps, no cluster)."""

from __future__ import annotations

import asyncio
import math
import os
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from csi_driver.events import EventRecorder, EventSink, NoEvents
from csi_driver.metrics import Metrics
from csi_driver.mounts import MountTable
from csi_driver.plans import Batch, KubePlans, Plan
from csi_driver.rotation import COMPONENT, Reconciler
from csi_driver.schedule import Schedule
from csi_driver.spcps import ApiStatus, NoStatus, PodStatusRecord, StatusWriter
from csi_driver.volumes import parse_target

TARGET = "/var/lib/kubelet/pods/u1/volumes/kubernetes.io~csi/secrets-store/mount"


def test_jitter_stays_within_ten_percent() -> None:
    assert Schedule(120, rng=lambda: 0.0).jittered() == pytest.approx(108)
    assert Schedule(120, rng=lambda: 1.0).jittered() == pytest.approx(132)
    assert Schedule(120, rng=lambda: 0.5).jittered() == pytest.approx(120)


def test_backoff_doubles_and_is_capped_by_the_interval() -> None:
    s = Schedule(10, rng=lambda: 0.5)
    assert [s.backoff(n) for n in range(1, 7)] == [1, 2, 4, 8, 10, 10]


def test_failure_schedules_a_retry_and_success_clears_it() -> None:
    s = Schedule(60, rng=lambda: 0.5)
    assert s.due(TARGET, 0, full_tick=True)
    assert not s.due(TARGET, 0, full_tick=False)
    assert s.failed(TARGET, 100) == 101
    assert s.failed(TARGET, 101) == 103
    assert not s.due(TARGET, 102, full_tick=True)  # waiting out its backoff, even at a tick
    assert s.due(TARGET, 103, full_tick=False)
    assert s.next_retry() == 103
    s.taken(TARGET, 103)  # retried, but skipped (pod busy): no busy loop
    assert s.next_retry() == 105
    s.succeeded(TARGET)
    assert s.next_retry() == math.inf
    assert s.due(TARGET, 104, full_tick=True)


def test_republish_throttle() -> None:
    s = Schedule(120, rng=lambda: 0.5)
    assert not s.republish_allowed(TARGET, 1000)  # first sight: wait an interval
    assert not s.republish_allowed(TARGET, 1119)
    assert s.republish_allowed(TARGET, 1120)
    s.state(TARGET).last_attempt = 1120
    assert not s.republish_allowed(TARGET, 1130)
    s.failed(TARGET, 1130)
    assert s.republish_allowed(TARGET, 1131)  # a failed volume retries on its backoff


def test_forget_drops_unmounted_volumes() -> None:
    s = Schedule(1)
    s.state(TARGET)
    s.forget(set())
    assert s.states == {}


def test_volume_name_from_target() -> None:
    assert parse_target(TARGET).volume == "secrets-store"
    assert parse_target("/x").volume == ""


class _NoPlans:
    async def plans(self, due: Any) -> Batch:
        return Batch()

    async def prepare(self) -> None:
        return None

    async def request(self, plan: Plan) -> tuple[str, str]:
        raise AssertionError("no plans, no requests")


def reconciler(
    *,
    interval: float,
    mounts: MountTable | None = None,
    providers: Any = None,
    events: EventSink | None = None,
    status: StatusWriter | None = None,
    metrics: Metrics | None = None,
    **kw: Any,
) -> Reconciler:
    """A Reconciler over fakes: no Kubernetes, no provider unless given."""
    return Reconciler(
        mounts=MountTable() if mounts is None else mounts,
        providers=providers,
        spcs=_Spcs(),
        metrics=Metrics(CollectorRegistry()) if metrics is None else metrics,
        plans=_NoPlans(),
        events=NoEvents() if events is None else events,
        status=NoStatus() if status is None else status,
        interval=interval,
        **kw,
    )


def _plan(**kw: Any) -> Plan:
    record = PodStatusRecord(
        pod_name=kw.pop("pod", "p1"),
        namespace="ns",
        pod_uid="u1",
        spc_name="spc",
        target_path=TARGET,
        node_id="n",
        mounted=True,
        objects={},
    )
    context = {
        "secretProviderClass": "spc",
        "csi.storage.k8s.io/pod.name": record.pod_name,
        "csi.storage.k8s.io/pod.uid": record.pod_name + "-uid",
    }
    context.update(kw.pop("context", {}))
    defaults: dict[str, Any] = {
        "provider": "azure",
        "spc_parameters": {"keyvaultName": "kv"},
        "volume_context": context,
        "secrets": {},
        "service_account": "default",
        "secret_ref": "",
    }
    defaults.update(kw)
    return Plan(record=record, **defaults)


def test_pods_differing_only_in_pod_facts_share() -> None:
    assert _plan(pod="a").share_key() == _plan(pod="b").share_key()


@pytest.mark.parametrize(
    "other",
    [
        {"service_account": "other"},
        {"secrets": {"clientid": "x", "clientsecret": "y"}},
        {"spc_parameters": {"keyvaultName": "kv", "objects": "other"}},
        {"context": {"keyvaultName": "elsewhere"}},
        {"provider": "vault"},
    ],
)
def test_anything_else_separates(other: dict[str, Any]) -> None:
    assert _plan(pod="a").share_key() != _plan(pod="b", **other).share_key()


def test_forced_pod_identity_and_unknown_service_account_never_share() -> None:
    assert _plan(forced=True).share_key() is None
    assert _plan(spc_parameters={"usePodIdentity": "true"}).share_key() is None
    assert _plan(service_account="").share_key() is None


def test_tokens_and_the_secret_ref_name_do_not_separate() -> None:
    """Pod-bound tokens differ per pod; what authorizes is the service account and the
    credentials' content, so a republish (which does not know the ref's name) matches a tick."""
    tokens = "csi.storage.k8s.io/serviceAccount.tokens"
    creds = {"clientid": "x", "clientsecret": "y"}
    a = _plan(pod="a", secrets={**creds, tokens: "a"}, context={tokens: "a"}, secret_ref="kv")
    b = _plan(pod="b", secrets={**creds, tokens: "b"}, context={tokens: "b"})
    assert a.share_key() == b.share_key()


async def test_run_ticks_on_the_interval_and_wakes_for_retries() -> None:
    now = [0.0]
    sleeps: list[float] = []

    async def sleep(d: float) -> None:
        sleeps.append(round(d, 6))
        now[0] += d
        if now[0] > 30:  # (the loop also wakes every 5 s to look for new intervals)
            raise asyncio.CancelledError

    r = reconciler(interval=10, clock=lambda: now[0], sleep=sleep, rng=lambda: 0.5)
    calls: list[tuple[float, bool]] = []

    async def tick(full: Any = True) -> None:
        calls.append((now[0], full))
        if len(calls) <= 2:  # a volume fails twice: retried 1 s later, then 2 s later
            r.schedule.failed(TARGET, now[0])
        elif len(calls) == 3:
            r.schedule.succeeded(TARGET)

    r.tick = tick  # type: ignore[method-assign]
    with pytest.raises(asyncio.CancelledError):
        await r.run()
    assert [(t, bool(f)) for t, f in calls[:5]] == [
        (10, True),
        (11, False),
        (13, False),
        (20, True),
        (30, True),
    ]


# ---- kubelet republish, with fakes (the e2e test covers the throttle's first half) ------------


def _read(target: str) -> str:
    return Path(target, "s").read_text()


class _Providers:
    def __init__(self) -> None:
        self.calls: list[dict[str, str]] = []
        self.version = "v1"
        self.fail = False

    async def mount(
        self,
        provider: str,
        attributes: str,
        secrets: str,
        target: str,
        permission: str,
        current: dict[str, str],
    ) -> Any:
        from csi_driver.atomic_writer import FileProjection
        from csi_driver.errors import ProviderError
        from csi_driver.provider_client import MountResult

        self.calls.append(current)
        if self.fail:
            raise ProviderError("rpc error: code = Unavailable desc = down")
        return MountResult(
            object_versions={"secret/s": self.version},
            files={"s": FileProjection(data=self.version.encode(), mode=0o644)},
        )


class _Spcs:
    async def get(self, ns: str, name: str) -> Any:
        return SimpleNamespace(provider="azure", parameters={"keyvaultName": "kv"}, annotations={})


class _Client:
    def __init__(self) -> None:
        self.created: list[Any] = []

    async def create(self, obj: Any, **kw: Any) -> Any:
        self.created.append(obj)
        return obj


async def test_republish_refreshes_once_an_interval_and_keeps_content_on_failure(
    tmp_path: Any,
) -> None:
    from csi_driver import atomic_writer
    from csi_driver.volumes import PublishRequest

    target = str(tmp_path / "pods" / "u1" / "volumes" / "kubernetes.io~csi" / "v" / "mount")
    os.makedirs(target)
    atomic_writer.write(target, {"s": atomic_writer.FileProjection(b"v0", 0o644)})
    record = PodStatusRecord("p", "ns", "u1", "spc", target, "n", True, {"secret/s": "v0"})
    providers, client = _Providers(), _Client()
    mounts = MountTable()
    mounts.add(record)
    now = [0.0]
    r = reconciler(
        interval=60,
        mounts=mounts,
        providers=providers,
        events=EventRecorder(client, COMPONENT, "n"),  # type: ignore[arg-type]
        status=ApiStatus(client),  # type: ignore[arg-type]
        clock=lambda: now[0],
        rng=lambda: 0.5,
    )
    req = PublishRequest("vol", target, True, True, {"csi.storage.k8s.io/pod.name": "p"}, {})
    await r.republish(req)  # first sight: starts the clock
    now[0] = 59
    await r.republish(req)
    assert providers.calls == []
    now[0] = 60
    await r.republish(req)
    assert providers.calls == [{"secret/s": "v0"}]  # current versions passed
    assert _read(target) == "v1"
    assert (mounts.get(target) or record).objects == {"secret/s": "v1"}
    providers.version, providers.fail = "v2", True
    now[0] = 120
    await r.republish(req)
    assert _read(target) == "v1"  # kept
    assert r.schedule.state(target).failures == 1
    now[0] = 121.5  # backoff (1 s ± 10 %) passed: retried without waiting an interval
    providers.fail = False
    await r.republish(req)
    assert _read(target) == "v2"
    assert r.schedule.state(target).failures == 0
    await asyncio.sleep(0)  # let the Warning event task run
    reasons = [getattr(o, "reason", None) for o in client.created]
    assert "MountRotationFailed" in reasons and "MountRotationComplete" in reasons


def _pod(**kw: Any) -> Any:
    meta = SimpleNamespace(uid=kw.get("uid", "u1"), deletionTimestamp=kw.get("deleting"))
    spec = SimpleNamespace(nodeName=kw.get("node", "n"))
    return SimpleNamespace(metadata=meta, spec=spec, status=SimpleNamespace(phase=kw.get("phase")))


@pytest.mark.parametrize(
    ("pod", "live"),
    [
        (_pod(), True),
        (None, False),
        (_pod(uid="u2"), False),  # replaced by a pod of the same name
        (_pod(deleting="2026-11-23T21:00:00Z"), False),
        (_pod(phase="Succeeded"), False),
        (_pod(phase="Failed"), False),
        (_pod(node="elsewhere"), False),
    ],
)
def test_pods_gone_terminating_or_elsewhere_are_skipped(pod: Any, live: bool) -> None:
    plans = KubePlans(None, _Spcs(), "n")  # type: ignore[arg-type]
    record = PodStatusRecord("p", "ns", "u1", "spc", TARGET, "n", True, {})
    assert plans.live(pod, record) is live


# ---- one call per group per interval, whatever the order of ticks and republishes -----------


class _GroupPlans:
    """Every due volume planned as its pod's kubelet would send it: one SPC, one account."""

    async def plans(self, due: Any) -> Batch:
        return Batch(plans=[_group_plan(r) for r in due])

    async def prepare(self) -> None:
        return None

    async def request(self, plan: Plan) -> tuple[str, str]:
        from csi_driver.plans import plain_request

        return plain_request(plan)


def _group_context(record: PodStatusRecord) -> dict[str, str]:
    return {
        "secretProviderClass": "spc",
        "csi.storage.k8s.io/pod.name": record.pod_name,
        "csi.storage.k8s.io/pod.namespace": record.namespace,
        "csi.storage.k8s.io/pod.uid": record.pod_uid,
        "csi.storage.k8s.io/serviceAccount.name": "default",
    }


def _group_plan(record: PodStatusRecord) -> Plan:
    return Plan(
        record=record,
        provider="azure",
        spc_parameters={"keyvaultName": "kv"},
        volume_context=_group_context(record),
        secrets={},
        service_account="default",
        secret_ref="",
    )


class _SlowProviders(_Providers):
    """Each Mount takes one loop turn, so concurrent callers overlap."""

    async def mount(self, *args: Any) -> Any:
        await asyncio.sleep(0)
        return await super().mount(*args)


def _group(tmp_path: Any, pods: int) -> tuple[MountTable, list[PodStatusRecord]]:
    from csi_driver import atomic_writer

    mounts, records = MountTable(), []
    for i in range(pods):
        target = str(tmp_path / "pods" / f"u{i}" / "volumes" / "kubernetes.io~csi" / "v" / "mount")
        os.makedirs(target)
        atomic_writer.write(target, {"s": atomic_writer.FileProjection(b"v0", 0o644)})
        record = PodStatusRecord(f"p{i}", "ns", f"u{i}", "spc", target, "n", True, {})
        mounts.add(record)
        records.append(record)
    return mounts, records


async def _republish(r: Reconciler, record: PodStatusRecord) -> None:
    from csi_driver.volumes import PublishRequest

    context = _group_context(record)
    await r.republish(PublishRequest("vol", record.target_path, True, True, context, {}))


@pytest.mark.parametrize(
    "order",
    [
        "tick, then republishes",
        "republishes together, then tick",
        "republishes one by one, then tick",
        "republishes around the tick",
    ],
)
async def test_a_group_costs_one_call_an_interval_whatever_the_order(
    tmp_path: Any, order: str
) -> None:
    pods = 6
    mounts, records = _group(tmp_path, pods)
    providers = _SlowProviders()
    now = [0.0]
    r = reconciler(interval=60, mounts=mounts, providers=providers, clock=lambda: now[0])
    r.plans = _GroupPlans()
    await r.tick(True)  # the first round: one call for the group
    for rec in records:
        await _republish(r, rec)  # kubelet's first republish starts each volume's clock
    assert len(providers.calls) == 1
    providers.version = "v2"
    now[0] = 60.0  # the interval has passed: every volume is due, by republish or by tick
    if order == "tick, then republishes":
        now[0] = 59.0  # the tick's jitter may bring it early
        await r.tick(True)
        now[0] = 60.5
        await asyncio.gather(*(_republish(r, rec) for rec in records))
    elif order == "republishes together, then tick":
        await asyncio.gather(*(_republish(r, rec) for rec in records))
        now[0] = 66.0
        await r.tick(True)
    elif order == "republishes one by one, then tick":
        for i, rec in enumerate(records):
            now[0] = 60.0 + i
            await _republish(r, rec)
        await r.tick(True)
    else:
        await _republish(r, records[0])
        now[0] = 61.0
        await asyncio.gather(r.tick(True), *(_republish(r, rec) for rec in records[1:]))
    assert len(providers.calls) == 2, order
    assert all(_read(rec.target_path) == "v2" for rec in records)
    assert r.calls_saved.labels("azure", "linux")._value.get() >= 2 * (pods - 1)
