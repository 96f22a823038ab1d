"""Restart-on-change's fault rows on the real control plane (the Deployment controller makes
ReplicaSets and Pods; no kubelet, so pods stay Pending and a rollout never finishes):

- a paused Deployment: the template is patched anyway (Kubernetes holds the rollout: no new
  ReplicaSet), the event says it is paused; resumed, it rolls once with the digest and is not
  patched again;
- a Deployment in the middle of someone else's rollout: one patch on top of it (Kubernetes
  rolls over to a third ReplicaSet carrying both the user's change and the digest);
- the leader losing its Lease while its patch is on the wire (the patch reached the API
  server, the answer never reached the controller): the old leader stops without patching
  again; the new leader, told the same change by another pod, does not patch again either,
  and acts on the next change.
"""

from __future__ import annotations

import asyncio
import datetime
from typing import Any

import pytest
from lightkube import AsyncClient, KubeConfig
from lightkube.resources.apps_v1 import Deployment, ReplicaSet
from lightkube.resources.coordination_v1 import Lease
from lightkube.types import PatchType
from prometheus_client import CollectorRegistry

from sync_controller import controller as controller_module
from sync_controller import server
from sync_controller.api import FIELD_MANAGER
from sync_controller.config import parse_args
from sync_controller.leader import LEASE_NAME, Elector, Timing
from sync_controller.metrics import Metrics
from sync_controller.restart import DIGEST_ANNOTATION

from .conftest import NAMESPACE, World, unique, until
from .test_restart_on_change import (
    MIN_INTERVAL,
    _deployment,
    _digest,
    _events,
    _generation,
    _live,
    _reporting,
    _restarting,
    _secret,
    _set,
    _spcps,
    _stays,
    restarts,
)

__all__ = ["restarts"]

pytestmark = pytest.mark.peers


async def _replicasets(world: World, app: str) -> list[ReplicaSet]:
    return [r async for r in world.admin.list(ReplicaSet, namespace=NAMESPACE, labels={"app": app})]


async def _rs_count(world: World, app: str, n: int) -> bool:
    return len(await _replicasets(world, app)) == n


async def _spec(world: World, name: str, spec: dict[str, Any]) -> None:
    await world.admin.patch(
        Deployment, name, {"spec": spec}, namespace=NAMESPACE, patch_type=PatchType.MERGE
    )


async def test_paused_deployment_patched_rolls_when_resumed(restarts: World) -> None:
    world = restarts
    secret, app = unique("paused-s"), unique("paused")
    await _secret(world, secret, "one")
    await _deployment(world, app, [secret])
    await until(lambda: _rs_count(world, app, 1), what="the first ReplicaSet")
    await _spec(world, app, {"paused": True})  # generation 2
    await _live(world)
    await _set(world, secret, "two")
    await until(lambda: _gen(world, app, 3), what="the patch of the paused Deployment")
    digest = await _digest(world, app)
    assert digest
    (event,) = await until(lambda: _events(world, app, "RestartedOnChange"), what="the event")
    assert "paused: it rolls when resumed" in (event.message or "")
    await asyncio.sleep(2)
    assert len(await _replicasets(world, app)) == 1  # Kubernetes holds a paused rollout

    await _spec(world, app, {"paused": False})  # generation 4: the rollout happens now
    await until(lambda: _rs_count(world, app, 2), what="the rollout on resume")
    newest = max(
        await _replicasets(world, app),
        key=lambda r: int(
            (r.metadata.annotations or {}).get("deployment.kubernetes.io/revision", 0)
        ),  # type: ignore[union-attr]
    )
    assert (newest.spec.template.metadata.annotations or {}).get(DIGEST_ANNOTATION) == digest  # type: ignore[union-attr]
    await _stays(world, app, 4, seconds=MIN_INTERVAL + 1)
    assert len(await _events(world, app, "RestartedOnChange")) == 1


async def _gen(world: World, app: str, n: int) -> bool:
    return await _generation(world, app) == n


async def test_mid_rollout_patched_once_on_top(restarts: World) -> None:
    world = restarts
    secret, app = unique("mid-s"), unique("mid")
    await _secret(world, secret, "one")
    await _deployment(world, app, [secret], replicas=2)
    await until(lambda: _rs_count(world, app, 1), what="the first ReplicaSet")
    user = {"template": {"metadata": {"annotations": {"example.com/by-hand": "1"}}}}
    await _spec(world, app, user)  # someone's rollout; its pods never start here
    await until(lambda: _rs_count(world, app, 2), what="the user's rollout")
    await _live(world)
    await _set(world, secret, "two")
    await until(lambda: _gen(world, app, 3), what="the patch mid-rollout")
    await until(lambda: _rs_count(world, app, 3), what="the rollover")
    await _stays(world, app, 3, seconds=MIN_INTERVAL + 1)
    d = await world.admin.get(Deployment, app, namespace=NAMESPACE)
    annotations = d.spec.template.metadata.annotations or {}  # type: ignore[union-attr]
    assert annotations.get("example.com/by-hand") == "1" and annotations.get(DIGEST_ANNOTATION)
    assert len(await _events(world, app, "RestartedOnChange")) == 1


class _AnswerLost(AsyncClient):
    """The old leader's client: its Deployment patch reaches the API server, and the answer
    never comes back (the lease is lost meanwhile)."""

    landed: asyncio.Event

    async def patch(self, res: Any, name: str, obj: Any, **kw: Any) -> Any:  # type: ignore[override]
        result = await super().patch(res, name, obj, **kw)
        if res is Deployment:
            self.landed.set()
            await asyncio.Event().wait()  # until cancelled
        return result


async def _steal_lease(world: World) -> None:
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    await world.admin.patch(
        Lease,
        LEASE_NAME,
        {"spec": {"holderIdentity": "thief", "renewTime": now}},
        namespace="kube-system",
        patch_type=PatchType.MERGE,
    )


async def test_lease_lost_mid_patch_no_second_patch(
    restarts: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    world = restarts
    app, spc = unique("lease"), unique("spc")
    pods = await _reporting(world, app, spc)

    world.controller.stop()  # releases the Lease: the in-process leader below takes it
    config = parse_args(
        [
            f"--kubeconfig={world.kubeconfig}",
            f"--provider-volume={world.provider.socket.parent}",
            "--rotation-poll-interval=0s",
            "--leader-elect",
            "--leader-election-namespace=kube-system",
            "--metrics-bind-address=0",
            "--health-probe-bind-address=0",
            "--enable-restart-on-change",
            f"--restart-min-interval={MIN_INTERVAL}s",
        ]
    )
    monkeypatch.setattr(controller_module, "Metrics", lambda: Metrics(CollectorRegistry()))
    client = _AnswerLost(config=KubeConfig.from_file(world.kubeconfig), field_manager=FIELD_MANAGER)
    client.landed = asyncio.Event()
    elector = Elector(client, "kube-system", "old-leader", Timing(3.0, 2.0, 0.5))
    old = asyncio.create_task(server._lead(config, client, elector, asyncio.Event()))
    try:
        await _live(world)
        await _spcps(world, pods[0], spc, "v2")  # node A rotates
        await asyncio.wait_for(client.landed.wait(), 15)
        await _steal_lease(world)
        assert await asyncio.wait_for(old, 10) == 1  # LeaderLost: stopped
    finally:
        old.cancel()
        await asyncio.gather(old, return_exceptions=True)
        await client.close()
    assert await _generation(world, app) == 2
    digest = await _digest(world, app)

    world.controller = _restarting(world, "restart-new-leader.log").start()
    await _live(world)  # the new leader's watches run (after the stolen Lease expired)
    await _spcps(world, pods[1], spc, "v2")  # node B reports the same change, late
    await _stays(world, app, 2, seconds=MIN_INTERVAL + 1)
    assert await _digest(world, app) == digest
    # a patch with the same digest would change nothing (no generation): its event shows it.
    # The old leader's event went with its lost answer: none at all.
    assert not await _events(world, app, "RestartedOnChange")
    await _spcps(world, pods[0], spc, "v3")  # the next change: the new leader acts
    await until(lambda: _gen(world, app, 3), within=MIN_INTERVAL + 10, what="the next rollout")
    assert len(await _events(world, app, "RestartedOnChange")) == 1
