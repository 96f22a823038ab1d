"""Least privilege, proven: every verb of every rule of daemonset/rbac.yaml and
daemonset/rbac-startup-taint.yaml is needed by a named behaviour of the driver, and none is
missing.

Each case runs the driver as a process, on a node of its own, with a token of a
ServiceAccount of its own bound to one ClusterRole that holds the rules of both files
minus one verb of one rule (ids: `<ClusterRole>/<resource>/<verb>`). It exercises the
behaviour that needs that verb and asserts it fails with a message from the driver (gRPC
status, pod event or log line) that carries the API server's words for what was denied
(`cannot <verb> resource "<resource>"`) and the ClusterRole to check.
The `full` case binds every rule and runs every behaviour: all succeed and the driver never
logs a Forbidden.

The startup taint's role is proven by drivers started with `--remove-startup-taint` on a Node
registered with the taint and a CSINode that lists the driver: without one of its verbs the
taint stays (the `full` case: it is removed).

`secrets` get is granted by two ClusterRoles (sync and rotation), each optional: a case that
drops a verb of one of them binds the rules without the other one (sync off, or rotation off),
the configurations an operator runs.

Every case's driver is started up front, in parallel, so the file stays well under a minute.
The behaviour table is docs/rbac.md.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import re
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc import aio
from lightkube import ApiError, AsyncClient
from lightkube.models.authorization_v1 import ResourceAttributes, SubjectAccessReviewSpec
from lightkube.models.core_v1 import (
    Container,
    CSIVolumeSource,
    LocalObjectReference,
    NodeSpec,
    PodSpec,
    Taint,
    Volume,
    VolumeMount,
)
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.models.storage_v1 import CSINodeDriver, CSINodeSpec
from lightkube.resources.authorization_v1 import SubjectAccessReview
from lightkube.resources.core_v1 import (
    ConfigMap,
    Event,
    Namespace,
    Node,
    Pod,
    Secret,
    ServiceAccount,
)
from lightkube.resources.storage_v1 import CSINode

from csi_driver import mounter
from csi_driver.kube import (
    ROLE_BASE,
    ROLE_ROTATION,
    ROLE_SYNC,
    ROLE_TAINT,
    ROLE_TOKEN,
    SecretProviderClass,
    SecretProviderClassPodStatus,
)
from csi_driver.startup_taint import TAINT_KEY
from testbed.controlplane import (
    ControlPlane,
    manifests,
    service_account_kubeconfig,
    service_account_with_rules,
)
from testbed.driver import DriverProcess
from testbed.kubelet import DRIVER, Kubelet, PodVolume, rpc_error
from testbed.provider import ProviderProcess
from testbed.rbac import Grant, grants
from tests.kube.fixtures import admin_client, control_plane

__all__ = ["admin_client", "control_plane"]

pytestmark = pytest.mark.filterwarnings("ignore:`verify=<str>` is deprecated:DeprecationWarning")

NAMESPACE = "least-privilege"
MANAGED = "secrets-store.csi.k8s.io/managed"
SA_TOKENS = "csi.storage.k8s.io/serviceAccount.tokens"
WITHIN = 15.0  # seconds for what must happen
ABSENT = 2.0  # seconds to show that what must not happen does not (watches are ~ms)


# ---- the grants of daemonset/rbac.yaml and rbac-startup-taint.yaml ---------------------------


def rbac_grants(*files: str) -> list[Grant]:
    """Every verb of every rule of the ClusterRoles in `files` (under daemonset/; the
    driver's two by default)."""
    docs: list[dict[str, Any]] = manifests(*(files or ("rbac.yaml", "rbac-startup-taint.yaml")))
    return [g for g in grants(docs) if not g.namespace]


GRANTS = rbac_grants()
ROLES = {ROLE_BASE, ROLE_SYNC, ROLE_ROTATION, ROLE_TOKEN, ROLE_TAINT}


def bound_grants(dropped: Grant | None) -> list[Grant]:
    """All grants but `dropped`; without the other optional `secrets` role when `dropped` is in
    one of them (its `get` would hide the drop)."""
    left_out = {ROLE_SYNC: ROLE_ROTATION, ROLE_ROTATION: ROLE_SYNC}.get(
        dropped.role if dropped else "", ""
    )
    return [g for g in GRANTS if g != dropped and g.role != left_out]


# ---- one case: a ServiceAccount, its ClusterRole, a driver on its own node ------------------


async def eventually(check: Callable[[], Awaitable[Any]], what: str, within: float = WITHIN) -> Any:
    deadline = time.monotonic() + within
    while True:
        result = await check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {within}s: {what}")
        await asyncio.sleep(0.05)


_names = itertools.count()


def unique(prefix: str) -> str:
    return f"{prefix}-{next(_names)}"


@dataclass
class Case:
    name: str
    node: str
    admin: AsyncClient
    ns: str
    driver: DriverProcess
    kubelet: Kubelet
    volumes: list[PodVolume] = field(default_factory=list)
    pods: list[Pod] = field(default_factory=list)

    # -- objects

    async def spc(
        self,
        files: dict[str, str],
        secret_objects: list[dict[str, Any]] | None = None,
        versions: dict[str, str] | None = None,
    ) -> str:
        name = unique(f"{self.name}-spc")
        params = {"fake.files": json.dumps(files)}
        if versions is not None:
            params["fake.versions"] = json.dumps(versions)
        spec: dict[str, Any] = {"provider": "fake", "parameters": params}
        if secret_objects is not None:
            spec["secretObjects"] = secret_objects
        await self.admin.create(
            SecretProviderClass.from_dict(
                {
                    "apiVersion": "secrets-store.csi.x-k8s.io/v1",
                    "kind": "SecretProviderClass",
                    "metadata": {"name": name, "namespace": self.ns},
                    "spec": spec,
                }
            )
        )
        return name

    async def pod(self, spc: str, secret_ref: str | None = None) -> Pod:
        pod = Pod(
            metadata=ObjectMeta(name=unique(f"{self.name}-pod"), namespace=self.ns),
            spec=PodSpec(
                nodeName=self.node,
                automountServiceAccountToken=False,
                terminationGracePeriodSeconds=0,
                containers=[
                    Container(
                        name="app",
                        image="busybox",
                        volumeMounts=[
                            VolumeMount(name="secrets-store", mountPath="/mnt/s", readOnly=True)
                        ],
                    )
                ],
                volumes=[
                    Volume(
                        name="secrets-store",
                        csi=CSIVolumeSource(
                            driver=DRIVER,
                            readOnly=True,
                            volumeAttributes={"secretProviderClass": spc},
                            nodePublishSecretRef=(
                                LocalObjectReference(name=secret_ref) if secret_ref else None
                            ),
                        ),
                    )
                ],
            ),
        )
        created = await self.admin.create(pod)
        self.pods.append(created)
        return created

    async def volume(self, spc: str, secret_ref: str | None = None) -> PodVolume:
        return await self.kubelet.volume(await self.pod(spc, secret_ref))

    async def mount(self, spc: str, secret_ref: str | None = None) -> PodVolume:
        vol = await self.volume(spc, secret_ref)
        await self.kubelet.publish(vol)
        self.volumes.append(vol)
        return vol

    async def secret(self, name: str) -> dict[str, Any] | None:
        try:
            obj = await self.admin.get(Secret, name, namespace=self.ns)
        except ApiError as e:
            if e.status.code == 404:
                return None
            raise
        data: dict[str, Any] = obj.to_dict()  # type: ignore[no-untyped-call]
        return data

    async def secret_data(self, name: str) -> dict[str, bytes] | None:
        s = await self.secret(name)
        if s is None:
            return None
        return {k: base64.b64decode(v) for k, v in (s.get("data") or {}).items()}

    async def managed_secret(self, name: str, value: str, immutable: bool = False) -> None:
        await self.admin.create(
            Secret(
                metadata=ObjectMeta(name=name, namespace=self.ns, labels={MANAGED: "true"}),
                stringData={"k": value},
                immutable=immutable or None,
            )
        )

    # -- what the driver says

    async def events(self, pod: Pod) -> list[dict[str, Any]]:
        assert pod.metadata is not None
        return [
            e.to_dict()  # type: ignore[no-untyped-call]
            async for e in self.admin.list(
                Event, namespace=self.ns, fields={"involvedObject.uid": pod.metadata.uid or ""}
            )
        ]

    async def event(self, pod: Pod, reason: str, *texts: str) -> str:
        async def check() -> str:
            for e in await self.events(pod):
                if e.get("reason") == reason and all(t in e.get("message", "") for t in texts):
                    return str(e["message"])
            return ""

        message: str = await eventually(check, f"a {reason} event with {texts}")
        return message

    async def log_line(self, *texts: str, since: int = 0) -> str:
        async def check() -> str:
            for line in self.driver.logs()[since:].splitlines():
                if all(t in line for t in texts):
                    return line
            return ""

        line: str = await eventually(check, f"a driver log line with {texts}")
        return line

    async def denied_log(self, g: Grant, *texts: str, since: int = 0) -> str:
        return await self.log_line(*texts, g.denied_text, g.role, since=since)

    async def close(self) -> None:
        volumes, pods, self.volumes, self.pods = self.volumes, self.pods, [], []
        for v in volumes:
            with contextlib.suppress(Exception):
                await self.kubelet.unpublish_as_kubelet(v)
        for p in pods:
            assert p.metadata is not None and p.metadata.name is not None
            with contextlib.suppress(Exception):
                await self.admin.delete(Pod, p.metadata.name, namespace=self.ns, grace_period=0)
        if self.driver.proc is not None:
            self.driver.stop()


def sync_objects(secret: str, key: str = "k", object_name: str = "a") -> list[dict[str, Any]]:
    return [
        {"secretName": secret, "type": "Opaque", "data": [{"objectName": object_name, "key": key}]}
    ]


# ---- the behaviours ----------------------------------------------------------------------------
# Each runs on a case's driver. `g` None: everything is granted and the behaviour must succeed;
# else `g` is the denied grant and the behaviour must fail saying so.

Behaviour = Callable[[Case, Grant | None], Awaitable[None]]


async def publish(c: Case, g: Grant | None) -> None:
    """NodePublishVolume mounts the files and records the mount (SPCPS create)."""
    spc = await c.spc({"a": "x"})
    vol = await c.volume(spc)
    pod = vol.pod.metadata
    assert pod is not None
    if g is None:
        await c.kubelet.publish(vol)
        c.volumes.append(vol)
        assert (vol.target / "a").read_text() == "x"
        status = await c.admin.get(
            SecretProviderClassPodStatus, f"{pod.name}-{c.ns}-{spc}", namespace=c.ns
        )
        assert status["status"]["mounted"] is True
        return
    with pytest.raises(aio.AioRpcError) as err:
        await c.kubelet.publish(vol)
    code, details = rpc_error(err.value)
    assert code == grpc.StatusCode.UNKNOWN, (code, details)
    assert "failed to create secret provider class pod status" in details, details
    assert g.denied_text in details and g.role in details, details
    assert not mounter.is_mount_point(str(vol.target))


async def sync_at_publish(c: Case, g: Grant | None) -> None:
    """secretObjects: the Secret exists when NodePublishVolume returns (before containers)."""
    name = unique(f"{c.name}-synced")
    spc = await c.spc({"a": "synced"}, sync_objects(name))
    vol = await c.volume(spc)
    try:
        await c.kubelet.publish(vol)
    except aio.AioRpcError as e:
        # only when the SPC read is the denied one and the driver's SPC watch had not brought
        # this SPC yet: the publish itself reads it then
        _, details = rpc_error(e)
        assert g is not None and g.resource == "secretproviderclasses", details
        assert "failed to get secretproviderclass" in details, details
        assert g.denied_text in details and g.role in details, details
        return
    c.volumes.append(vol)
    if g is None:
        assert await c.secret_data(name) == {"k": b"synced"}
        return
    message = await c.event(vol.pod, "FailedToCreateSecret", g.denied_text, g.role)
    assert "failed to sync" in message
    assert await c.secret(name) is None


async def sync_failure_event(c: Case, g: Grant | None) -> None:
    """A sync failure (secretObjects naming a file not mounted) is a Warning event on the pod."""
    spc = await c.spc({"a": "x"}, sync_objects(unique(f"{c.name}-nofile"), object_name="missing"))
    vol = await c.mount(spc)
    if g is None:
        await c.event(vol.pod, "FailedToCreateSecret", "objectName missing not found")
        return
    line = await c.denied_log(g, "failed to record event on pod", "objectName missing not found")
    assert line.startswith("E"), line  # klog's ERROR
    assert await c.events(vol.pod) == []


async def sync_update(c: Case, g: Grant | None) -> None:
    """A managed Secret with stale content is updated in place."""
    name = unique(f"{c.name}-stale")
    await c.managed_secret(name, "stale")
    vol = await c.mount(await c.spc({"a": "fresh"}, sync_objects(name)))
    if g is None:
        assert await c.secret_data(name) == {"k": b"fresh"}
        return
    await c.event(vol.pod, "FailedToCreateSecret", g.denied_text, g.role)
    assert await c.secret_data(name) == {"k": b"stale"}


async def sync_recreate(c: Case, g: Grant | None) -> None:
    """An immutable managed Secret with stale content is deleted and created again."""
    name = unique(f"{c.name}-frozen")
    await c.managed_secret(name, "stale", immutable=True)
    vol = await c.mount(await c.spc({"a": "fresh"}, sync_objects(name)))
    if g is None:
        assert await c.secret_data(name) == {"k": b"fresh"}
        return
    await c.event(vol.pod, "FailedToCreateSecret", g.denied_text, g.role)
    assert await c.secret_data(name) == {"k": b"stale"}


async def _watch_denied(c: Case, g: Grant, pod: Pod) -> None:
    """A forbidden watch: an ERROR line naming it, and a Warning event on every synced pod."""
    line = await c.denied_log(g, "watch interrupted")
    assert line.startswith("E"), line  # klog's ERROR
    await c.event(pod, "SecretSyncWatchForbidden", "changes after this mount are not followed")
    await c.event(pod, "SecretSyncWatchForbidden", g.denied_text, g.role)


async def secret_comes_back(c: Case, g: Grant | None) -> None:
    """A managed Secret deleted while its SPC is mounted is created again."""
    if g is not None:  # said at start, before any pod needs it
        await c.denied_log(g, "watch interrupted")
    name = unique(f"{c.name}-back")
    vol = await c.mount(await c.spc({"a": "v"}, sync_objects(name)))
    assert await c.secret_data(name) == {"k": b"v"}
    await c.admin.delete(Secret, name, namespace=c.ns)
    if g is None:

        async def back() -> bool:
            return await c.secret_data(name) == {"k": b"v"}

        await eventually(back, "the deleted Secret back")
        return
    await _watch_denied(c, g, vol.pod)
    await asyncio.sleep(ABSENT)
    assert await c.secret(name) is None


async def spc_edit_resyncs(c: Case, g: Grant | None) -> None:
    """An edit of an SPC's secretObjects reaches the Secret of a mounted pod."""
    if g is not None:
        await c.denied_log(g, "watch interrupted")
    name = unique(f"{c.name}-edit")
    spc = await c.spc({"a": "v"}, sync_objects(name, key="k1"))
    vol = await c.mount(spc)
    assert await c.secret_data(name) == {"k1": b"v"}
    await asyncio.sleep(0.3)  # the driver's watch has the SPC as it was
    obj = await c.admin.get(SecretProviderClass, spc, namespace=c.ns)
    obj["spec"]["secretObjects"] = sync_objects(name, key="k2")
    await c.admin.replace(obj)
    if g is None:

        async def edited() -> bool:
            return await c.secret_data(name) == {"k2": b"v"}

        await eventually(edited, "the SPC edit in the Secret")
        return
    await _watch_denied(c, g, vol.pod)
    await asyncio.sleep(ABSENT)
    assert await c.secret_data(name) == {"k1": b"v"}


async def pod_adopted(c: Case, g: Grant | None) -> None:
    """A pod adopted by a controller after its mount: the Secret gets that owner too."""
    if g is not None:
        await c.denied_log(g, "watch interrupted")
    name = unique(f"{c.name}-adopted")
    vol = await c.mount(await c.spc({"a": "v"}, sync_objects(name)))
    assert await c.secret_data(name) == {"k": b"v"}
    owner = await c.admin.create(
        ConfigMap(metadata=ObjectMeta(name=unique(f"{c.name}-owner"), namespace=c.ns))
    )
    assert owner.metadata is not None and vol.pod.metadata is not None
    ref = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "name": owner.metadata.name,
        "uid": owner.metadata.uid,
        "controller": True,
    }
    await c.admin.patch(
        Pod, vol.pod.metadata.name, {"metadata": {"ownerReferences": [ref]}}, namespace=c.ns
    )

    async def owned() -> bool:
        s = await c.secret(name)
        return s is not None and any(
            o.get("uid") == ref["uid"] for o in s["metadata"].get("ownerReferences") or []
        )

    if g is None:
        await eventually(owned, "the pod's new controller among the Secret's owners")
        return
    await _watch_denied(c, g, vol.pod)
    await asyncio.sleep(ABSENT)
    assert not await owned()


async def rotation(c: Case, g: Grant | None) -> None:
    """Rotation: new object versions reach the files and the SPCPS; the pod's
    nodePublishSecretRef and a fresh service-account token go to the provider."""
    ref = unique(f"{c.name}-ref")
    await c.admin.create(
        Secret(metadata=ObjectMeta(name=ref, namespace=c.ns), stringData={"clientid": "id"})
    )
    spc = await c.spc({"a": "one"}, versions={"secret/s1": "v1"})
    vol = await c.mount(spc, secret_ref=ref)
    assert vol.pod.metadata is not None
    status_name = f"{vol.pod.metadata.name}-{c.ns}-{spc}"
    obj = await c.admin.get(SecretProviderClass, spc, namespace=c.ns)
    obj["spec"]["parameters"]["fake.files"] = json.dumps({"a": "two"})
    obj["spec"]["parameters"]["fake.versions"] = json.dumps({"secret/s1": "v2"})
    await c.admin.replace(obj)

    async def versions() -> list[Any]:
        status = await c.admin.get(SecretProviderClassPodStatus, status_name, namespace=c.ns)
        return list(status["status"].get("objects") or [])

    if g is None:

        async def rotated() -> bool:
            return await versions() == [{"id": "secret/s1", "version": "v2"}]

        await eventually(rotated, "the new version in the SPCPS")
        assert (vol.target / "a").read_text() == "two"
        await c.event(vol.pod, "MountRotationComplete", f"spc {c.ns}/{spc}")
        attributes = json.loads((vol.target / "attributes.json").read_text())
        secrets = json.loads((vol.target / "secrets.json").read_text())
        assert secrets["clientid"] == "id"  # the nodePublishSecretRef, read by rotation
        tokens = secrets.get(SA_TOKENS) or attributes.get(SA_TOKENS)
        assert "api://AzureADTokenExchange" in json.loads(tokens)  # requested by rotation
        return
    await c.event(vol.pod, "MountRotationFailed", g.denied_text, g.role)
    assert await versions() == [{"id": "secret/s1", "version": "v1"}]


async def restart_recovery(c: Case, g: Grant | None) -> None:
    """A restarted driver finds this node's mounts again (its SPCPS) to rotate and sync them."""
    vol = await c.mount(await c.spc({"a": "x"}))
    c.driver.stop()
    since = len(c.driver.logs())
    c.driver.start()
    if g is None:
        line = await c.log_line("existing mounts on node", since=since)
        assert re.search(rf"recovered [1-9][0-9]* existing mounts on node {c.node}$", line), line
    else:
        line = await c.denied_log(g, "could not list this node's", since=since)
        assert line.startswith("E"), line  # klog's ERROR
        assert "recovered" not in c.driver.logs()[since:]
    assert (vol.target / "a").read_text() == "x"  # the mount itself is untouched


async def rotation_event(c: Case, g: Grant | None) -> None:
    """Rotation's own events: a denied one is an ERROR line naming the verb and the
    ClusterRole (as secret sync's are), and the rotation itself still happens."""
    spc = await c.spc({"a": "one"}, versions={"secret/s1": "v1"})
    vol = await c.mount(spc)
    obj = await c.admin.get(SecretProviderClass, spc, namespace=c.ns)
    obj["spec"]["parameters"]["fake.files"] = json.dumps({"a": "two"})
    obj["spec"]["parameters"]["fake.versions"] = json.dumps({"secret/s1": "v2"})
    await c.admin.replace(obj)
    if g is None:
        await c.event(vol.pod, "MountRotationComplete", f"spc {c.ns}/{spc}")
        return
    line = await c.denied_log(g, "rotation: could not record event")
    assert line.startswith("E"), line  # klog's ERROR
    # the denied event may be an earlier tick's (a failed one under load): the rotation itself
    # must still happen

    async def rotated() -> bool:
        return (vol.target / "a").read_text() == "two"

    await eventually(rotated, "the rotation despite the denied event")


async def _tainted(c: Case) -> bool:
    node = await c.admin.get(Node, c.node)
    return any(t.key == TAINT_KEY for t in (node.spec.taints if node.spec else None) or [])


async def startup_taint(c: Case, g: Grant | None) -> None:
    """--remove-startup-taint: the driver reads its Node (is the taint there?) and its CSINode
    (has kubelet registered it?), then patches the taint off its Node."""
    if g is None:

        async def gone() -> bool:
            return not await _tainted(c)

        await eventually(gone, f"the startup taint off node {c.node}")
        await c.log_line(f"startup taint {TAINT_KEY} removed from node {c.node}")
        return
    if g.resource == "csinodes":
        # A CSINode it cannot read is "not registered": said in words after 60 s (the ERROR
        # line and the Node event of test_startup_taint.py); before that, by the gauge alone.
        async def waiting(condition: str) -> float:
            return await asyncio.to_thread(
                c.driver.metric, "startup_taint_waiting", waiting_for=condition
            )

        async def on_csinode() -> bool:
            return await waiting("csinode") == 1

        await eventually(on_csinode, "startup_taint_waiting{waiting_for=csinode} 1")
        assert await waiting("node") == 0 and await waiting("provider/fake") == 0
    else:
        line = await c.denied_log(g, "startup taint", c.node)
        assert line.startswith("E"), line  # klog's ERROR
    await asyncio.sleep(ABSENT)
    assert await _tainted(c), f"the startup taint left node {c.node} without {g.id}"


# Which behaviour needs which grant: (ClusterRole, resource, verb) → behaviour.
NEEDS: dict[tuple[str, str, str], Behaviour] = {
    (ROLE_BASE, "events", "create"): sync_failure_event,
    (ROLE_BASE, "pods", "get"): sync_at_publish,
    (ROLE_BASE, "pods", "list"): rotation,
    (ROLE_BASE, "pods", "watch"): pod_adopted,
    (ROLE_BASE, "secretproviderclasses", "get"): sync_at_publish,
    (ROLE_BASE, "secretproviderclasses", "watch"): spc_edit_resyncs,
    (ROLE_BASE, "secretproviderclasspodstatuses", "create"): publish,
    (ROLE_BASE, "secretproviderclasspodstatuses", "get"): rotation,
    (ROLE_BASE, "secretproviderclasspodstatuses", "list"): restart_recovery,
    (ROLE_BASE, "secretproviderclasspodstatuses", "update"): rotation,
    (ROLE_BASE, "secretproviderclasspodstatuses", "watch"): secret_comes_back,
    (ROLE_BASE, "csidrivers", "get"): rotation,
    (ROLE_SYNC, "secrets", "create"): sync_at_publish,
    (ROLE_SYNC, "secrets", "get"): sync_at_publish,
    (ROLE_SYNC, "secrets", "update"): sync_update,
    (ROLE_SYNC, "secrets", "delete"): sync_recreate,
    (ROLE_SYNC, "secrets", "watch"): secret_comes_back,
    (ROLE_ROTATION, "secrets", "get"): rotation,
    (ROLE_TOKEN, "serviceaccounts/token", "create"): rotation,
    (ROLE_TAINT, "nodes", "get"): startup_taint,
    (ROLE_TAINT, "nodes", "patch"): startup_taint,
    (ROLE_TAINT, "csinodes", "get"): startup_taint,
}
ALL = [
    publish,
    sync_at_publish,
    sync_failure_event,
    sync_update,
    sync_recreate,
    secret_comes_back,
    spc_edit_resyncs,
    pod_adopted,
    rotation,
    startup_taint,
]  # and restart_recovery last: it restarts the driver
# A second behaviour a grant's drop must show, run in its case with rotation on.
ALSO: dict[tuple[str, str, str], Behaviour] = {
    (ROLE_BASE, "events", "create"): rotation_event,
}
ROTATING = {rotation, rotation_event}


def test_every_grant_is_needed_by_a_named_behaviour() -> None:
    """rbac.yaml and the table agree both ways: a verb no behaviour needs is a finding."""
    granted = {(g.role, g.resource, g.verb) for g in GRANTS}
    unneeded = sorted(granted - set(NEEDS))
    assert not unneeded, f"no behaviour of the driver needs {unneeded}: drop them from rbac*.yaml"
    missing = sorted(set(NEEDS) - granted)
    assert not missing, f"behaviours need {missing}, which daemonset/rbac*.yaml do not grant"
    assert {g.role for g in GRANTS} == ROLES
    assert set(NEEDS.values()) == {*ALL, restart_recovery}


# Each resource's API group, and the only objects of it the driver may touch (empty: any).
SCOPE: dict[str, tuple[str, tuple[str, ...]]] = {
    "events": ("", ()),
    "pods": ("", ()),
    "secrets": ("", ()),
    "serviceaccounts/token": ("", ()),
    "secretproviderclasses": ("secrets-store.csi.x-k8s.io", ()),
    "secretproviderclasspodstatuses": ("secrets-store.csi.x-k8s.io", ()),
    "csidrivers": ("storage.k8s.io", ("secrets-store.csi.k8s.io",)),
    "nodes": ("", ()),  # its own Node: a name RBAC cannot template
    "csinodes": ("storage.k8s.io", ()),
}


def test_every_grant_is_no_broader_than_needed() -> None:
    """The table above names (role, resource, verb); a rule can also grow by its API group
    (`*` or another group) or by losing resourceNames, which no drop case would notice."""
    for g in GRANTS:
        assert "*" not in (g.group, g.resource, g.verb, *g.names), f"{g.id}: a wildcard"
        assert (g.group, g.names) == SCOPE[g.resource], (
            f"{g.id}: apiGroup {g.group!r} resourceNames {list(g.names)}, "
            f"expected {SCOPE[g.resource]}"
        )


# ---- the cases, started together ---------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    """One driver: the grant it lacks (None: all of them) and the behaviours it must show.

    Rotation is on (1 s) only where `rotation` is among the behaviours: each tick with new
    files (the fake provider echoes fresh tokens) re-syncs the pod's Secrets, which would do
    the watches' work for them."""

    dropped: Grant | None
    behaviours: tuple[Behaviour, ...]
    id: str

    @property
    def rotation(self) -> bool:
        return any(b in ROTATING for b in self.behaviours)

    @property
    def taint(self) -> bool:
        return startup_taint in self.behaviours


def runs() -> list[Run]:
    out = []
    for g in GRANTS:
        key = (g.role, g.resource, g.verb)
        needs = tuple(b for b in (NEEDS.get(key), ALSO.get(key)) if b is not None)
        out.append(Run(g, needs, g.id))
    out.append(Run(None, (*(b for b in ALL if b not in ROTATING), restart_recovery), "full"))
    out.append(Run(None, (rotation, rotation_event), "full-rotation"))
    return out


CASES = runs()


@pytest.fixture(scope="module")
def root() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="lp-", dir="/tmp") as tmp:  # short socket paths
        yield Path(tmp)
        for point in sorted(mounter.mount_points(), reverse=True):
            if point.startswith(tmp + "/"):
                mounter.unmount(point)  # left by a failed case


@pytest.fixture(scope="module")
def provider_dirs(root: Path) -> Iterator[tuple[Path, Path]]:
    first, second = root / "providers", root / "providers-extra"
    first.mkdir()
    second.mkdir()
    p = ProviderProcess.fake(second / "fake.sock", root / "fake-provider.log")
    p.start()
    yield first, second
    p.stop()


async def _namespace(admin: AsyncClient) -> str:
    await admin.create(Namespace(metadata=ObjectMeta(name=NAMESPACE)))

    async def default_sa() -> bool:
        try:
            await admin.get(ServiceAccount, "default", namespace=NAMESPACE)
            return True
        except ApiError:
            return False

    await eventually(default_sa, "the namespace's default ServiceAccount", within=30)
    return NAMESPACE


async def _bind(admin: AsyncClient, name: str, grants: list[Grant]) -> None:
    """A ServiceAccount, one ClusterRole with `grants`, the binding; waits until the
    authorizer answers with it."""
    await service_account_with_rules(admin, name, [g.rule() for g in grants])
    probe = grants[0]
    resource, _, sub = probe.resource.partition("/")

    async def allowed() -> bool:
        review = await admin.create(
            SubjectAccessReview(
                spec=SubjectAccessReviewSpec(
                    user=f"system:serviceaccount:kube-system:{name}",
                    groups=["system:serviceaccounts", "system:authenticated"],
                    resourceAttributes=ResourceAttributes(
                        verb=probe.verb,
                        group=probe.group,
                        resource=resource,
                        subresource=sub or None,
                        name=probe.names[0] if probe.names else None,
                        namespace=NAMESPACE,
                    ),
                )
            )
        )
        return bool(review.status is not None and review.status.allowed)

    await eventually(allowed, f"RBAC for {name} in effect")


async def _tainted_node(admin: AsyncClient, node: str) -> None:
    """A Node registered with the startup taint, and the CSINode kubelet writes once the
    node-driver-registrar has registered the driver."""
    await admin.create(
        Node(
            metadata=ObjectMeta(name=node),
            spec=NodeSpec(taints=[Taint(key=TAINT_KEY, value="true", effect="NoSchedule")]),
        )
    )
    await admin.create(
        CSINode(
            metadata=ObjectMeta(name=node),
            spec=CSINodeSpec(drivers=[CSINodeDriver(name=DRIVER, nodeID=node)]),
        )
    )


@pytest.fixture(scope="module")
async def cases(
    control_plane: ControlPlane,
    admin_client: AsyncClient,
    root: Path,
    provider_dirs: tuple[Path, Path],
) -> AsyncIterator[dict[str, Case]]:
    ns = await _namespace(admin_client)
    out: dict[str, Case] = {}

    async def prepare(i: int, run: Run) -> None:
        name = f"lp-{i}"
        await _bind(admin_client, name, bound_grants(run.dropped))
        kubeconfig = await service_account_kubeconfig(
            control_plane, admin_client, "kube-system", name, root / f"{name}.kubeconfig"
        )
        taint: tuple[str, ...] = ()
        if run.taint:
            await _tainted_node(admin_client, f"{name}-node")
            taint = ("--remove-startup-taint", "--startup-taint-providers=fake")
        driver = DriverProcess(
            root,
            kubeconfig=kubeconfig,
            provider_dirs=provider_dirs,
            node_id=f"{name}-node",
            name=name,
            extra=(
                f"--enable-secret-rotation={str(run.rotation).lower()}",
                "--rotation-poll-interval=1s",
                *taint,
            ),
        )
        await asyncio.to_thread(driver.start)
        out[run.id] = Case(
            name=name,
            node=f"{name}-node",
            admin=admin_client,
            ns=ns,
            driver=driver,
            kubelet=Kubelet(admin_client, root / "kubelet" / name, str(driver.socket)),
        )

    await asyncio.gather(*(prepare(i, run) for i, run in enumerate(CASES)))
    yield out
    for c in out.values():
        await c.close()
        await c.kubelet.close()
    for run in CASES:
        if run.taint:
            for kind in (CSINode, Node):
                with contextlib.suppress(ApiError):
                    await admin_client.delete(kind, f"{out[run.id].name}-node")
    for c in out.values():  # for a look after a failed run
        shutil.copy(c.driver.log, f"/tmp/least-privilege-{c.name}.log")


@pytest.mark.parametrize("run", CASES, ids=lambda run: run.id)
async def test_least_privilege(run: Run, cases: dict[str, Case]) -> None:
    c = cases[run.id]
    g = run.dropped
    try:
        assert run.behaviours, f"no behaviour of the driver needs {run.id}"
        first = [b for b in run.behaviours if b is not restart_recovery]
        await asyncio.gather(*(b(c, g) for b in first))
        if restart_recovery in run.behaviours:  # last: it restarts the driver
            await restart_recovery(c, g)
        if g is None:
            logs = c.driver.logs()
            assert "forbidden" not in logs.lower(), logs
    finally:
        await c.close()
