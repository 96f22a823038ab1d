"""Restart-on-change on a real node (issue 17's proof): rotation on (5 s), the SecretSync
component running as a process with `--enable-restart-on-change` and its own ServiceAccount
(daemonset/sync-controller/rbac.yaml + rbac-restart-on-change.yaml), real Deployments and
StatefulSets rolled by kube-controller-manager, pods started by kubelet + containerd.

- A Deployment (2 replicas) reading a driver-synced Secret (`secretObjects`) through an env
  var, annotated: a new value in Key Vault → within one rotation interval plus the rollout,
  exactly one new ReplicaSet whose pods print the new value (`kubectl exec`).
- The same Deployment without the annotation, on the same SecretProviderClass and Secret: its
  pods keep the old value and it is never rolled.
- A StatefulSet (2 replicas) reading the value through a `subPath` mount of the CSI volume
  (which never changes in a running container): rolled once, its new pods read the new value.

Each story prints the times (value changed in Key Vault → template patched → every new pod
Ready) and the rollout counts that docs/rotation.md reports.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from lightkube import codecs
from lightkube.resources.apps_v1 import Deployment, ReplicaSet, StatefulSet
from lightkube.resources.core_v1 import Event, Pod

from sync_controller.restart import ANNOTATION, DIGEST_ANNOTATION, SETTLE
from testbed.controlplane import manifests, service_account_kubeconfig
from testbed.emulator import TENANT_ID
from testbed.sync_controller import SyncControllerProcess

from .conftest import (
    DRIVER,
    NAMESPACE,
    SLEEP,
    VAULT,
    Cluster,
    create_sp_secret,
    create_spc,
    deployment_manifest,
    objects,
    unique,
)
from .test_sync_rotation import INTERVAL, eventually

CONTROLLER_SA = ("kube-system", "secrets-store-sync-controller-manager")
MIN_INTERVAL = INTERVAL  # a wrongly deferred second rollout would show inside the watch below
QUIET = MIN_INTERVAL + 2 * INTERVAL + 3  # after a rollout: long enough for a second one to show
ROLLOUT = 2 * INTERVAL + 60  # waited for at most (the rollout of 2 pods included)
PATCHED_WITHIN = INTERVAL + SETTLE + 5  # the driver's tick, the controller's settling, slack


@pytest.fixture(scope="module")
async def restarter(cluster: Cluster) -> AsyncIterator[SyncControllerProcess]:
    """The cluster-level component as a process, restart-on-change on, as its own
    ServiceAccount with both of its roles (rbac.yaml is applied with the cluster)."""
    for doc in manifests("sync-controller/rbac-restart-on-change.yaml"):
        await cluster.admin.apply(codecs.from_dict(doc), field_manager="tests", force=True)
    ns, sa = CONTROLLER_SA
    workdir = cluster.node.workdir
    kubeconfig = await service_account_kubeconfig(
        cluster.node.cp, cluster.admin, ns, sa, workdir / "sync-controller.kubeconfig"
    )
    proc = SyncControllerProcess(
        kubeconfig,
        cluster.provider.socket.parent,
        workdir / "sync-controller.log",
        "--rotation-poll-interval=0s",
        "--leader-elect",
        "--leader-election-lease-duration=3s",
        "--leader-election-renew-deadline=2s",
        "--leader-election-retry-period=0.5s",
        "--enable-restart-on-change",
        f"--restart-min-interval={MIN_INTERVAL:.0f}s",
    ).start()
    try:
        yield proc
    finally:
        proc.stop()
        lines = [line for line in proc.text().splitlines() if "restart-on-change" in line]
        print("\n[e2e] the controller's restart-on-change lines:\n" + "\n".join(lines[-20:]))


def _template(name: str, spc: str, creds: str, container: dict[str, Any]) -> dict[str, Any]:
    csi = {
        "driver": DRIVER,
        "readOnly": True,
        "volumeAttributes": {"secretProviderClass": spc},
        "nodePublishSecretRef": {"name": creds},
    }
    return {
        "metadata": {"labels": {"app": name}},
        "spec": {
            "hostNetwork": True,
            "terminationGracePeriodSeconds": 5,
            "tolerations": [{"operator": "Exists"}],
            "containers": [
                {
                    "name": "app",
                    "image": "docker.io/library/busybox:e2e",
                    "imagePullPolicy": "Never",
                    **container,
                }
            ],
            "volumes": [{"name": "secrets-store", "csi": csi}],
        },
    }


def _env_container(secret: str) -> dict[str, Any]:
    """Prints VALUE once (as an app reading its env at start would), then sleeps."""
    return {
        "command": ["/bin/sh", "-c", f'echo "VALUE=$VALUE"; {SLEEP}'],
        "env": [{"name": "VALUE", "valueFrom": {"secretKeyRef": {"name": secret, "key": "v"}}}],
        "volumeMounts": [
            {"name": "secrets-store", "mountPath": "/mnt/secrets-store", "readOnly": True}
        ],
    }


def _subpath_container() -> dict[str, Any]:
    return {
        "command": ["/bin/sh", "-c", SLEEP],
        "volumeMounts": [
            {
                "name": "secrets-store",
                "mountPath": "/etc/app/value",
                "subPath": "value",
                "readOnly": True,
            }
        ],
    }


async def _deployment(cluster: Cluster, name: str, template: dict[str, Any], opt_in: bool) -> None:
    annotations = {ANNOTATION: "true"} if opt_in else {}
    await cluster.admin.create(
        Deployment.from_dict(deployment_manifest(name, template, annotations))
    )


async def _statefulset(cluster: Cluster, name: str, template: dict[str, Any]) -> None:
    body = {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": {"name": name, "namespace": NAMESPACE, "annotations": {ANNOTATION: "true"}},
        "spec": {
            "replicas": 2,
            "serviceName": name,
            "podManagementPolicy": "Parallel",
            "selector": {"matchLabels": {"app": name}},
            "template": template,
        },
    }
    await cluster.admin.create(StatefulSet.from_dict(body))


async def _rolled_out(cluster: Cluster, res: Any, name: str, generation: int) -> bool:
    """The workload at `generation`, every replica updated, ready and no old one left."""
    obj = await cluster.admin.get(res, name, namespace=NAMESPACE)
    st = obj.status
    if obj.metadata.generation != generation or st is None:
        return False
    if st.observedGeneration != generation or st.updatedReplicas != 2 or st.readyReplicas != 2:
        return False
    if res is StatefulSet:
        return bool(st.currentRevision == st.updateRevision and st.replicas == 2)
    return st.replicas == 2


async def _pods(cluster: Cluster, app: str) -> list[Pod]:
    return [
        p
        async for p in cluster.admin.list(Pod, namespace=NAMESPACE, labels={"app": app})
        if p.metadata is not None and p.metadata.deletionTimestamp is None
    ]


async def _replicasets(cluster: Cluster, app: str) -> list[ReplicaSet]:
    return [
        r async for r in cluster.admin.list(ReplicaSet, namespace=NAMESPACE, labels={"app": app})
    ]


async def _generation(cluster: Cluster, res: Any, name: str) -> int:
    obj = await cluster.admin.get(res, name, namespace=NAMESPACE)
    return int(obj.metadata.generation or 0)


async def _restart_events(cluster: Cluster, name: str) -> list[str]:
    return [
        str(e.message)
        async for e in cluster.admin.list(Event, namespace=NAMESPACE)
        if e.involvedObject.name == name and e.reason == "RestartedOnChange"
    ]


def _printenv(cluster: Cluster, pods: list[Pod]) -> list[str]:
    """The container's VALUE through `kubectl exec` (Debian's busybox has no `printenv`
    applet: the shell's `echo "$VALUE"` reads the same environment)."""
    out = []
    for p in pods:
        r = cluster.exec(str(p.metadata.name), "sh", "-c", 'echo "$VALUE"')  # type: ignore[union-attr]
        assert r.returncode == 0, r.stderr
        out.append(r.stdout.strip())
    return out


async def _stays(cluster: Cluster, res: Any, name: str, generation: int, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert await _generation(cluster, res, name) == generation, f"{name} rolled again"
        await asyncio.sleep(0.5)


async def _spc(cluster: Cluster, obj: str, synced: str | None = None) -> str:
    """An SPC mounting `obj` as the file `value`, synced to the Secret `synced` (key `v`)."""
    return await create_spc(
        cluster.admin,
        {
            "keyvaultName": VAULT,
            "tenantId": TENANT_ID,
            "objects": objects({"objectName": obj, "objectType": "secret", "objectAlias": "value"}),
        },
        secret_objects=None
        if synced is None
        else [
            {"secretName": synced, "type": "Opaque", "data": [{"objectName": "value", "key": "v"}]}
        ],
    )


async def _change_and_roll(
    cluster: Cluster, res: Any, name: str, obj: str, value: str
) -> tuple[float, float]:
    """Sets the new value in Key Vault; returns the seconds until the template is patched and
    until the rollout is done."""
    changed = time.monotonic()
    cluster.emulator.set_secret(VAULT, obj, value)
    await eventually(lambda: _gen_is(cluster, res, name, 2), ROLLOUT, "the template patched")
    patched = time.monotonic() - changed
    assert patched <= PATCHED_WITHIN, f"patched {patched:.1f}s after the change"
    await eventually(lambda: _rolled_out(cluster, res, name, 2), ROLLOUT, "the rollout")
    return patched, time.monotonic() - changed


async def test_env_var_deployment_rolled_once_unannotated_kept(
    cluster: Cluster, restarter: SyncControllerProcess
) -> None:
    obj, secret = unique("roc-env"), unique("roc-synced")
    cluster.emulator.set_secret(VAULT, obj, "env-v1")
    creds = await create_sp_secret(cluster.admin)
    spc = await _spc(cluster, obj, secret)
    app, plain = unique("roc-app"), unique("roc-plain")
    await _deployment(cluster, app, _template(app, spc, creds, _env_container(secret)), True)
    await _deployment(cluster, plain, _template(plain, spc, creds, _env_container(secret)), False)
    try:
        for name in (app, plain):
            await eventually(
                lambda n=name: _rolled_out(cluster, Deployment, n, 1), 90, f"{name} ready"
            )
        old_app, old_plain = await _pods(cluster, app), await _pods(cluster, plain)
        assert _printenv(cluster, old_app) == ["env-v1"] * 2
        assert _printenv(cluster, old_plain) == ["env-v1"] * 2
        assert len(await _replicasets(cluster, app)) == 1

        patched, ready = await _change_and_roll(cluster, Deployment, app, obj, "env-v2")
        new = await _pods(cluster, app)
        assert len(new) == 2 and not {p.metadata.uid for p in new} & {  # type: ignore[union-attr]
            p.metadata.uid  # type: ignore[union-attr]
            for p in old_app
        }
        assert _printenv(cluster, new) == ["env-v2"] * 2
        await _stays(cluster, Deployment, app, 2, QUIET)  # no second rollout (the SPCPS
        # versions and the Secret both changed: one change)
        rsets = await _replicasets(cluster, app)
        events = await _restart_events(cluster, app)
        assert len(rsets) == 2, [r.metadata.name for r in rsets]  # type: ignore[union-attr]
        assert len(events) == 1, events
        assert "env-v2" not in events[0] and "env-v1" not in events[0]

        # the unannotated one: never patched, same pods, the old env
        assert await _generation(cluster, Deployment, plain) == 1
        assert len(await _replicasets(cluster, plain)) == 1
        still = await _pods(cluster, plain)
        assert {p.metadata.uid for p in still} == {p.metadata.uid for p in old_plain}  # type: ignore[union-attr]
        assert _printenv(cluster, still) == ["env-v1"] * 2
        assert not await _restart_events(cluster, plain)
        dep = await cluster.admin.get(Deployment, app, namespace=NAMESPACE)
        digest = (dep.spec.template.metadata.annotations or {}).get(DIGEST_ANNOTATION)  # type: ignore[union-attr]
        print(
            f"\n[e2e] restart-on-change, Deployment x2 (env var): value changed -> template "
            f"patched {patched:.1f}s, -> 2 new pods Ready {ready:.1f}s "
            f"(rotation interval {INTERVAL:.0f}s); ReplicaSets 1 -> {len(rsets)}, "
            f"RestartedOnChange events {len(events)}, no second rollout in the {QUIET:.0f}s "
            f"after; unannotated: 0 rollouts, env still env-v1; digest {digest}"
        )
    finally:
        for name in (app, plain):
            await cluster.admin.delete(Deployment, name, namespace=NAMESPACE)


async def _gen_is(cluster: Cluster, res: Any, name: str, n: int) -> bool:
    return await _generation(cluster, res, name) == n


async def test_subpath_statefulset_rolled_once(
    cluster: Cluster, restarter: SyncControllerProcess
) -> None:
    obj = unique("roc-sub")
    cluster.emulator.set_secret(VAULT, obj, "sub-v1")
    creds = await create_sp_secret(cluster.admin)
    spc = await _spc(cluster, obj)
    sts = unique("roc-sts")
    await _statefulset(cluster, sts, _template(sts, spc, creds, _subpath_container()))
    try:
        await eventually(lambda: _rolled_out(cluster, StatefulSet, sts, 1), 90, "sts ready")
        old = await _pods(cluster, sts)

        def read(pods: list[Pod]) -> list[str]:
            return [
                cluster.exec(str(p.metadata.name), "cat", "/etc/app/value").stdout for p in pods
            ]  # type: ignore[union-attr]

        assert read(old) == ["sub-v1"] * 2
        revision = (
            await cluster.admin.get(StatefulSet, sts, namespace=NAMESPACE)
        ).status.currentRevision  # type: ignore[union-attr]
        patched, ready = await _change_and_roll(cluster, StatefulSet, sts, obj, "sub-v2")
        new = await _pods(cluster, sts)
        assert not {p.metadata.uid for p in new} & {p.metadata.uid for p in old}  # type: ignore[union-attr]
        assert read(new) == ["sub-v2"] * 2
        await _stays(cluster, StatefulSet, sts, 2, QUIET)
        status = (await cluster.admin.get(StatefulSet, sts, namespace=NAMESPACE)).status
        assert status is not None and status.currentRevision != revision
        events = await _restart_events(cluster, sts)
        assert len(events) == 1, events
        print(
            f"\n[e2e] restart-on-change, StatefulSet x2 (subPath): value changed -> template "
            f"patched {patched:.1f}s, -> 2 new pods Ready {ready:.1f}s; "
            f"revisions 1 -> 2, RestartedOnChange events {len(events)}, no second rollout in "
            f"the {QUIET:.0f}s after"
        )
    finally:
        await cluster.admin.delete(StatefulSet, sts, namespace=NAMESPACE)
