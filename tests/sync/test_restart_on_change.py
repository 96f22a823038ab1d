"""Restart-on-change on the real control plane (kube-apiserver + kube-controller-manager, so
the Deployment controller makes the ReplicaSets and Pods; no kubelet: pods stay Pending).

The session's controller is replaced for this module by one with --enable-restart-on-change
and --restart-min-interval=3s, running as its ServiceAccount with rbac.yaml plus
rbac-restart-on-change.yaml; the plain one is put back after."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import re
import time
from collections.abc import AsyncIterator

import httpx2 as httpx
import pytest
from lightkube import ApiError, codecs
from lightkube.resources.apps_v1 import Deployment, StatefulSet
from lightkube.resources.core_v1 import Event, Pod, Secret
from lightkube.resources.rbac_authorization_v1 import ClusterRoleBinding

from csi_driver.kube import SecretProviderClassPodStatus
from csi_driver.secret_writer import MANAGED_LABEL
from sync_controller.restart import ANNOTATION, DIGEST_ANNOTATION
from testbed.controlplane import manifests
from testbed.sync_controller import SyncControllerProcess

from .conftest import NAMESPACE, World, fast_lease_controller, unique, until

pytestmark = pytest.mark.peers

MIN_INTERVAL = 3.0


_controller = fast_lease_controller


def _restarting(world: World, log: str) -> SyncControllerProcess:
    return _controller(
        world, log, "--enable-restart-on-change", f"--restart-min-interval={MIN_INTERVAL}s"
    )


@pytest.fixture(scope="module")
async def restarts(world: World) -> AsyncIterator[World]:
    for doc in manifests("sync-controller/rbac-restart-on-change.yaml"):
        await world.admin.apply(codecs.from_dict(doc), field_manager="tests", force=True)
    world.controller.stop()
    world.controller = _restarting(world, "restart-on-change.log").start()
    try:
        yield world
    finally:
        world.controller.stop()
        world.controller = _controller(world, "controller-after-restart.log").start()


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


async def _secret(world: World, name: str, value: str, managed: bool = True) -> None:
    labels = {MANAGED_LABEL: "true"} if managed else {}
    body = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": NAMESPACE, "labels": labels},
        "data": {"password": _b64(value)},
    }
    await world.admin.create(Secret.from_dict(body))


async def _set(world: World, name: str, value: str, label: str = "") -> Secret:
    """Rewrite the Secret's data, as the driver's sync does on rotation."""
    secret = await world.admin.get(Secret, name, namespace=NAMESPACE)
    secret.data = {"password": _b64(value)}
    if label:
        secret.metadata.labels = {**(secret.metadata.labels or {}), "touched": label}
    return await world.admin.replace(secret)


async def _deployment(
    world: World, name: str, secrets: list[str], opt_in: str | None = "true", replicas: int = 1
) -> None:
    annotations = {ANNOTATION: opt_in} if opt_in is not None else {}
    env = [
        {"name": f"S{i}", "valueFrom": {"secretKeyRef": {"name": s, "key": "password"}}}
        for i, s in enumerate(secrets)
    ]
    body = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": NAMESPACE, "annotations": annotations},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "app", "image": "example/app:1", "env": env}]},
            },
        },
    }
    await world.admin.create(Deployment.from_dict(body))


async def _generation(world: World, name: str) -> int:
    d = await world.admin.get(Deployment, name, namespace=NAMESPACE)
    return int(d.metadata.generation or 0)


async def _digest(world: World, name: str) -> str:
    d = await world.admin.get(Deployment, name, namespace=NAMESPACE)
    return str((d.spec.template.metadata.annotations or {}).get(DIGEST_ANNOTATION) or "")


async def _events(world: World, name: str, reason: str) -> list[Event]:
    return [
        e
        async for e in world.admin.list(Event, namespace=NAMESPACE)
        if e.involvedObject.name == name and e.reason == reason
    ]


def _secret_digest(secret: Secret) -> str:
    m = secret.metadata
    text = f"secret|{NAMESPACE}/{m.name}|{m.uid}|{m.resourceVersion}"
    return hashlib.sha256(text.encode()).hexdigest()[:32]


async def _live(world: World) -> None:
    """Until the controller's watches are running: a bad annotation's Warning comes back."""
    probe = unique("probe")
    await _deployment(world, probe, [], opt_in="maybe")
    await until(lambda: _events(world, probe, "InvalidRestartOnChange"), what="the controller")


async def _stays(world: World, name: str, generation: int, seconds: float = 1.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert await _generation(world, name) == generation, f"{name} was patched"
        await asyncio.sleep(0.1)


async def test_managed_secret_change_restarts_once(restarts: World) -> None:
    world = restarts
    managed, unmanaged = unique("managed"), unique("unmanaged")
    app, plain, bad = unique("app"), unique("plain"), unique("bad")
    await _secret(world, managed, "one")
    await _secret(world, unmanaged, "one", managed=False)
    await _deployment(world, app, [managed, unmanaged])
    await _deployment(world, plain, [managed], opt_in=None)
    await _deployment(world, bad, [managed], opt_in="yes please")
    (warning,) = await until(lambda: _events(world, bad, "InvalidRestartOnChange"), what="warn")
    assert warning.type == "Warning" and "yes please" in (warning.message or "")

    await _set(world, unmanaged, "two")  # not ours: never a restart
    await _stays(world, app, 1)
    changed = await _set(world, managed, "two")

    async def patched() -> bool:
        return await _generation(world, app) == 2

    await until(patched, what="the rollout of the annotated Deployment")
    assert await _digest(world, app) == _secret_digest(changed)
    (event,) = await until(lambda: _events(world, app, "RestartedOnChange"), what="the event")
    assert event.type == "Normal" and f"Secret {NAMESPACE}/{managed}" in (event.message or "")
    assert "two" not in (event.message or "")

    await _set(world, managed, "two", label="again")  # the same data reported again
    await _stays(world, app, 2, seconds=MIN_INTERVAL + 1)  # past the rate limit's delay
    assert await _generation(world, plain) == 1  # not annotated
    assert await _generation(world, bad) == 1  # a bad value is not "true"


async def _spcps(world: World, pod: Pod, spc: str, version: str) -> None:
    name = f"{pod.metadata.name}-{NAMESPACE}-{spc}"
    body = {
        "apiVersion": "secrets-store.csi.x-k8s.io/v1",
        "kind": "SecretProviderClassPodStatus",
        "metadata": {
            "name": name,
            "namespace": NAMESPACE,
            "ownerReferences": [
                {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "name": pod.metadata.name,
                    "uid": pod.metadata.uid,
                }
            ],
        },
        "status": {
            "podName": pod.metadata.name,
            "targetPath": "/var/lib/kubelet/pods/x/volumes/kubernetes.io~csi/v/mount",
            "mounted": True,
            "secretProviderClassName": spc,
            "objects": [{"id": "secret/db-password", "version": version}],
        },
    }
    try:
        current = await world.admin.get(SecretProviderClassPodStatus, name, namespace=NAMESPACE)
    except ApiError:
        await world.admin.create(SecretProviderClassPodStatus.from_dict(body))
        return
    data = current.to_dict()
    data["status"] = body["status"]
    await world.admin.replace(SecretProviderClassPodStatus.from_dict(data))


async def _pods(world: World, app: str) -> list[Pod]:
    return [p async for p in world.admin.list(Pod, namespace=NAMESPACE, labels={"app": app})]


async def test_spcps_versions_change_restarts_once(restarts: World) -> None:
    world = restarts
    app, spc = unique("mounts"), unique("spc")
    pods = await _reporting(world, app, spc)
    await _live(world)
    for pod in pods:  # two nodes rotate, seconds apart: one rollout
        await _spcps(world, pod, spc, "v2")

    async def patched() -> bool:
        return await _generation(world, app) == 2

    await until(patched, what="the rollout")
    (event,) = await until(lambda: _events(world, app, "RestartedOnChange"), what="the event")
    assert f"SecretProviderClass {NAMESPACE}/{spc}" in (event.message or "")
    new = [
        p for p in await _pods(world, app) if p.metadata.name not in {x.metadata.name for x in pods}
    ]
    for pod in new:  # the new pods mount the new version: no loop
        await _spcps(world, pod, spc, "v2")
    await _stays(world, app, 2, seconds=1.5)


async def _reporting(world: World, app: str, spc: str) -> list[Pod]:
    """An annotated Deployment of 2 whose pods (made by the Deployment controller) report
    version v1 of `spc` in their SPCPS."""
    await _deployment(world, app, [], replicas=2)
    pods: list[Pod] = await until(
        lambda: _pods_if(world, app, 2), what="the Deployment controller's two pods"
    )
    for pod in pods:
        await _spcps(world, pod, spc, "v1")
    return pods


async def _pods_if(world: World, app: str, n: int) -> list[Pod] | None:
    pods = await _pods(world, app)
    return pods if len(pods) == n else None


async def _metric(world: World, result: str) -> float:
    port = next(a for a in world.controller.argv if a.startswith("--metrics-bind-address"))
    text = httpx.get(f"http://{port.split('=')[1]}/metrics").text
    m = re.search(
        rf'secretsync_restart_on_change_total{{kind="Deployment",result="{result}"}} (\S+)', text
    )
    return float(m.group(1)) if m else 0.0


async def test_rate_limit_then_controller_restart(restarts: World) -> None:
    world = restarts
    secret, app = unique("rl"), unique("limited")
    await _secret(world, secret, "one")
    await _deployment(world, app, [secret])
    await _live(world)
    await _set(world, secret, "two")
    await until(lambda: _gen_is(world, app, 2), what="the first rollout")
    first = time.monotonic()
    suppressed = await _metric(world, "suppressed")
    last = await _set(world, secret, "three")  # another change, within the minimum interval
    await until(lambda: _gen_is(world, app, 3), within=MIN_INTERVAL + 5, what="the second")
    assert time.monotonic() - first >= MIN_INTERVAL - 0.5
    assert await _digest(world, app) == _secret_digest(last)
    assert await _metric(world, "suppressed") > suppressed
    assert await _metric(world, "restarted") >= 2

    # the controller restarted: the digest in the template is its memory, nothing again
    world.controller.stop()
    world.controller = _restarting(world, "restart-on-change-2.log").start()
    await _live(world)
    await _stays(world, app, 3)


async def _gen_is(world: World, app: str, n: int) -> bool:
    return await _generation(world, app) == n


async def _statefulset(world: World, name: str) -> None:
    body = {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": {"name": name, "namespace": NAMESPACE, "annotations": {ANNOTATION: "true"}},
        "spec": {
            "replicas": 1,
            "serviceName": name,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "app", "image": "example/app:1"}]},
            },
        },
    }
    await world.admin.create(StatefulSet.from_dict(body))


async def _sts_generation(world: World, name: str) -> int:
    s = await world.admin.get(StatefulSet, name, namespace=NAMESPACE)
    return int(s.metadata.generation or 0)


async def test_statefulset_flapping_version_and_bare_pod(restarts: World) -> None:
    """A StatefulSet's pod (owned directly): v1 → v2 one rollout, back to v1 another (a change
    is a change); a pod with no owner: its SPCPS changes restart nothing and say why."""
    world = restarts
    sts, spc, bare = unique("sts"), unique("spc"), unique("bare")
    await _statefulset(world, sts)
    (pod,) = await until(lambda: _pods_if(world, sts, 1), what="the StatefulSet's pod")
    await world.admin.create(
        Pod.from_dict(
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": bare, "namespace": NAMESPACE},
                "spec": {"containers": [{"name": "app", "image": "example/app:1"}]},
            }
        )
    )
    lone = await world.admin.get(Pod, bare, namespace=NAMESPACE)
    for p in (pod, lone):
        await _spcps(world, p, spc, "v1")
    await _live(world)
    for p in (pod, lone):
        await _spcps(world, p, spc, "v2")
    await until(lambda: _sts_is(world, sts, 2), what="the StatefulSet's rollout")
    await until(
        lambda: _logged(world, f"pod {NAMESPACE}/{bare} has no workload owner"), what="the log"
    )
    await _spcps(world, pod, spc, "v1")  # flaps back: after the minimum interval, once more
    await until(lambda: _sts_is(world, sts, 3), within=MIN_INTERVAL + 5, what="the flap back")


async def _sts_is(world: World, name: str, n: int) -> bool:
    return await _sts_generation(world, name) == n


async def _logged(world: World, text: str) -> bool:
    return text in world.controller.text()


async def test_patch_forbidden_names_the_role(restarts: World) -> None:
    """The role's binding removed (running watches go on): the rollout is refused, and the
    Warning event and the log name the role and its file; bound again, the next change rolls."""
    world = restarts
    secret, app = unique("forbidden"), unique("denied")
    await _secret(world, secret, "one")
    await _deployment(world, app, [secret])
    await _live(world)
    (binding,) = [
        d
        for d in manifests("sync-controller/rbac-restart-on-change.yaml")
        if d["kind"] == "ClusterRoleBinding"
    ]
    name = str(binding["metadata"]["name"])  # type: ignore[index]
    await world.admin.delete(ClusterRoleBinding, name)
    try:
        await _set(world, secret, "two")
        (event,) = await until(lambda: _events(world, app, "RestartFailed"), what="RestartFailed")
    finally:
        await world.admin.apply(codecs.from_dict(binding), field_manager="tests", force=True)
    assert event.type == "Warning"
    assert "secrets-store-sync-controller-restart-on-change-role" in (event.message or "")
    assert "rbac-restart-on-change.yaml" in world.controller.text()
    assert await _generation(world, app) == 1
