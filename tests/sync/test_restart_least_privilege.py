"""Least privilege of restart-on-change, proven as the driver's is (tests/kube/
test_least_privilege.py): every verb of every rule of
daemonset/sync-controller/rbac-restart-on-change.yaml is needed, and none is missing.

Each case runs the controller as a process (`--enable-restart-on-change`, no leader election:
the session's controller is stopped for this module, so the cases run one at a time), as a
ServiceAccount of its own bound to one ClusterRole holding rbac.yaml's rules (what the
SecretSync part and the Secret watches need) plus the restart role's rules minus one verb of
one resource (ids `<ClusterRole>/<resource>/<verb>`). Every case sees the same three changes:
a Deployment's pod reports new versions in its SPCPS (pod → ReplicaSet → Deployment), and the
managed Secrets an annotated StatefulSet and DaemonSet read change their data. Without a verb,
the workload that needs it is not patched and the controller says why: an ERROR line (and,
for a refused patch, a Warning `RestartFailed` event) carrying the API server's words
(`cannot <verb> resource "<resource>"`) and the role and file to check. The `full` case binds
every rule: all three are rolled and nothing is denied.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from lightkube import AsyncClient
from lightkube.resources.apps_v1 import DaemonSet, Deployment, StatefulSet

from sync_controller.restart import ANNOTATION, RBAC_FILE, ROLE, SETTLE
from testbed.controlplane import (
    ControlPlane,
    service_account_kubeconfig,
    service_account_with_rules,
)
from testbed.rbac import Grant
from testbed.sync_controller import SyncControllerProcess
from tests.kube.test_least_privilege import rbac_grants

from .conftest import NAMESPACE, World, unique, until
from .test_restart_on_change import (
    _controller,
    _events,
    _live,
    _pods_if,
    _secret,
    _set,
    _spcps,
)

pytestmark = pytest.mark.peers

KINDS = {"deployments": Deployment, "statefulsets": StatefulSet, "daemonsets": DaemonSet}
WITHIN = 20.0  # seconds for what must happen
ABSENT = SETTLE + 2.0  # seconds to show that a patch that must not happen does not


GRANTS = rbac_grants("sync-controller/rbac-restart-on-change.yaml")
BASE = rbac_grants("sync-controller/rbac.yaml")


@pytest.fixture(scope="module")
async def alone(world: World) -> AsyncIterator[World]:
    """No other controller acting while the cases run; the session's one back after."""
    world.controller.stop()
    try:
        yield world
    finally:
        world.controller = _controller(world, "controller-after-least-privilege.log").start()


async def _workload(world: World, res: Any, name: str, secret: str | None) -> None:
    env = [{"name": "S", "valueFrom": {"secretKeyRef": {"name": secret, "key": "password"}}}]
    spec: dict[str, Any] = {
        "selector": {"matchLabels": {"app": name}},
        "template": {
            "metadata": {"labels": {"app": name}},
            "spec": {
                "containers": [
                    {"name": "app", "image": "example/app:1", "env": env if secret else []}
                ]
            },
        },
    }
    if res is not DaemonSet:
        spec["replicas"] = 1
    if res is StatefulSet:
        spec["serviceName"] = name
    body = {
        "apiVersion": "apps/v1",
        "kind": res.__name__,
        "metadata": {"name": name, "namespace": NAMESPACE, "annotations": {ANNOTATION: "true"}},
        "spec": spec,
    }
    await world.admin.create(res.from_dict(body))


async def _gen(world: World, res: Any, name: str) -> int:
    obj = await world.admin.get(res, name, namespace=NAMESPACE)
    return int(obj.metadata.generation or 0)


def _needs(dropped: Grant | None) -> set[str]:
    """The workloads (by resource) that cannot be rolled without `dropped`."""
    if dropped is None:
        return set()
    if dropped.resource in KINDS:
        return {dropped.resource}
    return {"deployments"}  # pods, replicasets, SPCPS: the Deployment's SPCPS trigger


@pytest.mark.parametrize("dropped", [None, *GRANTS], ids=lambda g: g.id if g else "full")
async def test_restart_role(
    alone: World, control_plane: ControlPlane, admin_client: AsyncClient, dropped: Grant | None
) -> None:
    world = alone
    sa = unique("restart-lp")
    rules = [g.rule() for g in [*BASE, *GRANTS] if g != dropped]
    await service_account_with_rules(admin_client, sa, rules)
    kubeconfig = await service_account_kubeconfig(
        control_plane, admin_client, "kube-system", sa, world.root / f"{sa}.kubeconfig"
    )
    names = {kind: unique(f"lp-{kind[:3]}") for kind in KINDS}
    secrets = {kind: unique(f"lp-{kind[:3]}-s") for kind in ("statefulsets", "daemonsets")}
    spc = unique("lp-spc")
    for kind, secret in secrets.items():
        await _secret(world, secret, "one")
        await _workload(world, KINDS[kind], names[kind], secret)
    await _workload(world, Deployment, names["deployments"], None)
    (pod,) = await until(lambda: _pods_if(world, names["deployments"], 1), what="the pod")
    await _spcps(world, pod, spc, "v1")

    proc = SyncControllerProcess(
        kubeconfig,
        world.provider.socket.parent,
        world.root / f"{sa}.log",
        "--rotation-poll-interval=0s",
        "--enable-restart-on-change",
        pod_name=sa,
    ).start()
    try:
        if dropped is not None and dropped.id.endswith("/deployments/watch"):
            await until(lambda: _logged(proc, dropped), within=WITHIN, what="the watch denied")
        else:
            await _live(world)  # its Deployment watch runs (the others start with it)
            await asyncio.sleep(0.5)
        await _spcps(world, pod, spc, "v2")
        for secret in secrets.values():
            await _set(world, secret, "two")
        await _check(world, proc, names, dropped)
    finally:
        proc.stop()


async def _logged(proc: SyncControllerProcess, dropped: Grant) -> bool:
    return any(
        dropped.denied_text in line and ROLE in line and RBAC_FILE in line
        for line in proc.text().splitlines()
        if line.startswith("E")
    )


async def _check(
    world: World, proc: SyncControllerProcess, names: dict[str, str], dropped: Grant | None
) -> None:
    blocked = _needs(dropped)
    for kind, name in names.items():
        if kind in blocked:
            continue
        await until(
            lambda k=kind, n=name: _is(world, KINDS[k], n, 2), within=WITHIN, what=f"{kind} rolled"
        )
    if dropped is None:
        assert "cannot " not in proc.text() and "forbidden" not in proc.text().lower()
        return
    await until(lambda: _logged(proc, dropped), within=WITHIN, what=f"{dropped.id} named")
    if dropped.verb == "patch":
        name = names[dropped.resource]
        (event,) = await until(lambda: _events(world, name, "RestartFailed"), what="the event")
        assert dropped.denied_text in (event.message or "") and ROLE in (event.message or "")
    deadline = time.monotonic() + ABSENT
    while time.monotonic() < deadline:
        for kind in blocked:
            assert await _gen(world, KINDS[kind], names[kind]) == 1, f"{kind} was rolled"
        await asyncio.sleep(0.2)


async def _is(world: World, res: Any, name: str, n: int) -> bool:
    return await _gen(world, res, name) == n
