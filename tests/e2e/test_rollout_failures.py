"""Stories 5, 6 and 7b on a real node: a Deployment's rolling update never loses the synced
Secret; the failures users hit show up as pod events that say what is wrong; the provider
restarted under running pods."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from lightkube import ApiError
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.apps_v1 import Deployment
from lightkube.resources.core_v1 import Pod, Secret, ServiceAccount

from testbed.emulator import TENANT_ID

from .conftest import (
    NAMESPACE,
    VAULT,
    WI_CLIENT,
    Cluster,
    create_sp_secret,
    create_spc,
    deployment_manifest,
    objects,
    pod_events,
    pod_manifest,
    run_pod,
    unique,
)
from .test_sync_rotation import INTERVAL, MOUNT, eventually, secret_data


async def _events_of(cluster: Cluster, pod: str, reason: str) -> list[str]:
    return [e for e in await pod_events(cluster.admin, pod) if reason in e]


async def test_deployment_rollout_keeps_synced_secret(cluster: Cluster) -> None:
    """Story 5: 2 replicas, a rolling update: the synced Secret exists at every instant of
    the rollout, and goes when the Deployment is deleted."""
    creds = await create_sp_secret(cluster.admin)
    synced = unique("rollout-secret")
    spc = await create_spc(
        cluster.admin,
        {
            "keyvaultName": VAULT,
            "tenantId": TENANT_ID,
            "objects": objects({"objectName": "username", "objectType": "secret"}),
        },
        secret_objects=[
            {
                "secretName": synced,
                "type": "Opaque",
                "data": [{"objectName": "username", "key": "username"}],
            }
        ],
    )
    name = unique("rollout")
    pod = pod_manifest(
        name,
        spc,
        secret_ref=creds,
        env=[
            {
                "name": "SECRET_USERNAME",
                "valueFrom": {"secretKeyRef": {"name": synced, "key": "username"}},
            }
        ],
    )
    template: dict[str, Any] = {"metadata": {"labels": {"app": name}}, "spec": pod["spec"]}
    await cluster.admin.create(Deployment.from_dict(deployment_manifest(name, template)))

    async def ready() -> bool:
        d = await cluster.admin.get(Deployment, name, namespace=NAMESPACE)
        st = d.status
        return (
            st is not None
            and st.observedGeneration == d.metadata.generation  # type: ignore[union-attr]
            and st.updatedReplicas == 2
            and st.readyReplicas == 2
            and st.replicas == 2
        )

    await eventually(ready, 60, "Deployment ready")
    assert await secret_data(cluster, synced) == {"username": "app-user"}

    # rolling update: watch the Secret at every step of it
    missing: list[float] = []
    done = asyncio.Event()

    async def watch_secret() -> None:
        while not done.is_set():
            if await secret_data(cluster, synced) is None:
                missing.append(time.monotonic())
            await asyncio.sleep(0.05)

    watcher = asyncio.create_task(watch_secret())
    template["metadata"]["annotations"] = {"e2e/restarted": "1"}
    await cluster.admin.patch(
        Deployment,
        name,
        {"spec": {"template": {"metadata": {"annotations": {"e2e/restarted": "1"}}}}},
        namespace=NAMESPACE,
    )
    try:
        await eventually(ready, 90, "rollout finished")

        async def only_new_pods() -> bool:
            pods = [
                p async for p in cluster.admin.list(Pod, namespace=NAMESPACE, labels={"app": name})
            ]
            return len(pods) == 2 and all(
                (p.metadata.annotations or {}).get("e2e/restarted") == "1"  # type: ignore[union-attr]
                for p in pods
            )

        await eventually(only_new_pods, 30, "old pods gone")
    finally:
        done.set()
        await watcher
    assert not missing, f"the synced Secret was missing {len(missing)} times during the rollout"

    await cluster.admin.delete(Deployment, name, namespace=NAMESPACE)

    async def collected() -> bool:
        return await secret_data(cluster, synced) is None

    await eventually(collected, 60, "synced Secret collected after the Deployment went")


async def test_secret_object_matching_no_file_warns(cluster: Cluster) -> None:
    """Story 6b: a secretObjects entry that names no mounted file: a Warning event on the pod
    says which; the pod itself runs."""
    creds = await create_sp_secret(cluster.admin)
    spc = await create_spc(
        cluster.admin,
        {
            "keyvaultName": VAULT,
            "tenantId": TENANT_ID,
            "objects": objects({"objectName": "username", "objectType": "secret"}),
        },
        secret_objects=[
            {
                "secretName": (synced := unique("mismatch")),
                "type": "Opaque",
                "data": [{"objectName": "no-such-file", "key": "k"}],
            }
        ],
    )
    name = unique("mismatch")
    await run_pod(cluster.admin, pod_manifest(name, spc, secret_ref=creds))

    async def warned() -> bool:
        return any(
            "Warning" in e and "no-such-file" in e for e in await pod_events(cluster.admin, name)
        )

    await eventually(warned, 20, "a Warning event naming the object")
    warnings = [e for e in await pod_events(cluster.admin, name) if "Warning" in e]
    print(f"[e2e] {warnings[0]}")
    with pytest.raises(ApiError) as info:  # nothing half-synced
        await cluster.admin.get(Secret, synced, namespace=NAMESPACE)
    assert info.value.status.code == 404


async def test_workload_identity_subject_mismatch_event(cluster: Cluster) -> None:
    """Story 6c: a ServiceAccount the identity has no federated credential for: the
    FailedMount event carries Entra's AADSTS70021."""
    sa = unique("stranger")
    await cluster.admin.create(ServiceAccount(metadata=ObjectMeta(name=sa, namespace=NAMESPACE)))
    spc = await create_spc(
        cluster.admin,
        {
            "keyvaultName": VAULT,
            "tenantId": TENANT_ID,
            "clientID": WI_CLIENT,
            "objects": objects({"objectName": "db-password", "objectType": "secret"}),
        },
    )
    name = unique("aadsts")
    manifest = pod_manifest(name, spc)
    manifest["spec"]["serviceAccountName"] = sa
    await cluster.admin.create(Pod.from_dict(manifest))

    async def failed() -> bool:
        return bool(await _events_of(cluster, name, "FailedMount"))

    await eventually(failed, 30, "FailedMount event")
    event = (await _events_of(cluster, name, "FailedMount"))[0]
    print(f"[e2e] {event}")
    assert "AADSTS70021" in event, event
    await cluster.admin.delete(Pod, name, namespace=NAMESPACE, grace_period=0)


async def test_provider_restarted_content_intact_next_tick_recovers(cluster: Cluster) -> None:
    """Story 7b: the provider goes away mid-rotation: the mounted content stays as it was;
    once it is back, the next tick brings the new value."""
    obj = unique("prov-restart")
    cluster.emulator.set_secret(VAULT, obj, "one")
    creds = await create_sp_secret(cluster.admin)
    spc = await create_spc(
        cluster.admin,
        {
            "keyvaultName": VAULT,
            "tenantId": TENANT_ID,
            "objects": objects({"objectName": obj, "objectType": "secret", "objectAlias": "v"}),
        },
    )
    name = unique("prov")
    await run_pod(cluster.admin, pod_manifest(name, spc, secret_ref=creds))
    cluster.provider.stop()
    try:
        cluster.emulator.set_secret(VAULT, obj, "two")
        await asyncio.sleep(INTERVAL + 1)  # at least one tick without a provider
        r = cluster.exec(name, "cat", f"{MOUNT}/v")
        assert (r.returncode, r.stdout) == (0, "one"), r.stderr
    finally:
        cluster.provider.start()

    async def recovered() -> bool:
        return cluster.exec(name, "cat", f"{MOUNT}/v").stdout == "two"

    await eventually(recovered, 2 * INTERVAL + 10, "rotation after the provider came back")
