"""Restart-on-change's pure parts: which Secrets a template consumes, what "rolled out" means,
the annotation's values, and the global limit on rollouts in flight."""

from __future__ import annotations

import asyncio
import time
from typing import Any, cast

from lightkube import AsyncClient
from prometheus_client import CollectorRegistry

from csi_driver.events import NoEvents
from sync_controller.metrics import Metrics
from sync_controller.restart import (
    ANNOTATION,
    DIGEST_ANNOTATION,
    Change,
    RestartController,
    _rolled_out,
    opted_in,
    secret_names,
)


def test_secret_names_every_reference() -> None:
    template: dict[str, Any] = {
        "spec": {
            "initContainers": [{"envFrom": [{"secretRef": {"name": "init-from"}}]}],
            "containers": [
                {
                    "env": [
                        {"name": "A", "valueFrom": {"secretKeyRef": {"name": "env", "key": "k"}}},
                        {"name": "B", "valueFrom": {"configMapKeyRef": {"name": "cm", "key": "k"}}},
                        {"name": "C", "value": "plain"},
                    ],
                    "envFrom": [{"secretRef": {"name": "from"}}, {"configMapRef": {"name": "cm2"}}],
                }
            ],
            "volumes": [
                {"name": "v", "secret": {"secretName": "vol"}},
                {"name": "p", "projected": {"sources": [{"secret": {"name": "proj"}}]}},
                {"name": "c", "csi": {"driver": "secrets-store.csi.k8s.io"}},
            ],
        }
    }
    assert secret_names(template) == {"init-from", "env", "from", "vol", "proj"}


def test_opted_in_values() -> None:
    def on(value: str | None) -> bool | None:
        annotations = {} if value is None else {ANNOTATION: value}
        return opted_in({"metadata": {"annotations": annotations}})

    assert on(None) is False and on("false") is False and on("False") is False
    assert on("true") is True and on(" TRUE ") is True
    assert on("yes") is None and on("") is None and on("1") is None


def test_rolled_out() -> None:
    meta = {"generation": 3}
    assert not _rolled_out({"metadata": meta, "spec": {"replicas": 2}, "status": {}})
    pending = {"observedGeneration": 3, "updatedReplicas": 1}
    assert not _rolled_out({"metadata": meta, "spec": {"replicas": 2}, "status": pending})
    done = {"observedGeneration": 3, "updatedReplicas": 2}
    assert _rolled_out({"metadata": meta, "spec": {"replicas": 2}, "status": done})
    ds = {"observedGeneration": 3, "desiredNumberScheduled": 4, "updatedNumberScheduled": 3}
    assert not _rolled_out({"metadata": meta, "spec": {}, "status": ds})
    assert _rolled_out(
        {"metadata": meta, "spec": {}, "status": {**ds, "updatedNumberScheduled": 4}}
    )


def test_max_in_flight_holds_others_back_until_done_or_timeout() -> None:
    c = RestartController(
        cast(AsyncClient, None), NoEvents(), Metrics(CollectorRegistry()), 0.0, 1, 30.0
    )
    busy, other = ("Deployment", "ns", "busy"), ("Deployment", "ns", "other")
    assert c._wait_for(other) <= 0  # nothing in flight
    c._in_flight[busy] = time.monotonic()
    assert c._wait_for(other) > 0  # one in flight, at most one: held back
    assert c._wait_for(busy) <= 0  # the one in flight is not held back by itself
    c.on_workload("Deployment")(
        "MODIFIED",
        {
            "metadata": {"name": "busy", "namespace": "ns", "generation": 2},
            "spec": {"replicas": 1},
            "status": {"observedGeneration": 2, "updatedReplicas": 1},
        },
    )
    assert busy not in c._in_flight and c._wait_for(other) <= 0  # rolled out: free again
    c._in_flight[busy] = time.monotonic() - 31
    assert c._wait_for(other) <= 0 and busy not in c._in_flight  # past the rollout timeout


def test_paused_is_not_in_flight() -> None:
    """A paused Deployment's patch starts no rollout: it must not hold a slot of the global
    limit (for up to the rollout timeout) until someone resumes it."""
    paused = {
        "metadata": {"generation": 5},
        "spec": {"replicas": 2, "paused": True},
        "status": {"observedGeneration": 4, "updatedReplicas": 0},
    }
    assert _rolled_out(paused)
    assert not _rolled_out({**paused, "spec": {"replicas": 2, "paused": False}})


async def test_one_rotation_reported_twice_is_one_patch() -> None:
    """The SPCPS versions and the synced Secret of one rotation arrive milliseconds apart:
    one patch carries both digests; either reported again later is a no-op. (No clock: a
    zero settle still lets every request made before the loop runs again join the first.)"""
    c = RestartController(
        cast(AsyncClient, None), NoEvents(), Metrics(CollectorRegistry()), 0.0, 5, settle=0.0
    )
    wkey = ("Deployment", "ns", "app")
    c.workloads[wkey] = {"metadata": {"name": "app", "namespace": "ns"}, "spec": {}}
    patches: list[list[str]] = []

    async def restart(key: tuple[str, str, str], changes: list[Change]) -> None:
        patches.append([ch.digest for ch in changes])
        template = {"metadata": {"annotations": {DIGEST_ANNOTATION: ",".join(patches[-1])}}}
        c.workloads[key] = {**c.workloads[key], "spec": {"template": template}}

    c._restart = restart  # type: ignore[method-assign]
    worker = asyncio.create_task(c._worker())
    try:
        c.request(wkey, Change("spc-digest", "SecretProviderClass ns/spc"))
        c.request(wkey, Change("secret-digest", "Secret ns/s"))
        await _turns()
        assert patches == [["spc-digest", "secret-digest"]]
        c.request(wkey, Change("secret-digest", "Secret ns/s"))  # reported again
        c.request(wkey, Change("spc-digest", "SecretProviderClass ns/spc"))  # another node
        await _turns()
        assert patches == [["spc-digest", "secret-digest"]]
        c.request(wkey, Change("next", "Secret ns/s"))  # a new change: a new patch
        await _turns()
        assert patches[-1] == ["next"]
    finally:
        worker.cancel()
        await asyncio.gather(worker, return_exceptions=True)


async def _turns() -> None:
    for _ in range(10):
        await asyncio.sleep(0)
