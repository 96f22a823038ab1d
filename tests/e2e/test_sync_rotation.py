"""Stories 3, 4, 6, 7 on a real node: secretObjects consumed as env vars and a TLS Secret,
rotation reaching files and synced Secrets (the env var does not change), a failure users
hit, and the driver restarted under running pods."""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Awaitable, Callable

from lightkube import ApiError
from lightkube.resources.core_v1 import Pod, Secret

from testbed.emulator import TENANT_ID

from .conftest import (
    NAMESPACE,
    NOROLE_CLIENT,
    NOROLE_SECRET,
    ROTATION_INTERVAL,
    VAULT,
    Cluster,
    create_sp_secret,
    create_spc,
    objects,
    pod_events,
    pod_manifest,
    run_pod,
    unique,
)

MOUNT = "/mnt/secrets-store"
INTERVAL = float(ROTATION_INTERVAL.rstrip("s"))


async def eventually(check: Callable[[], Awaitable[bool]], within: float, what: str) -> float:
    started = time.monotonic()
    while time.monotonic() - started < within:
        if await check():
            return time.monotonic() - started
        await asyncio.sleep(0.25)
    raise AssertionError(f"{what}: not within {within:.0f}s")


async def secret_data(cluster: Cluster, name: str) -> dict[str, str] | None:
    try:
        s = await cluster.admin.get(Secret, name, namespace=NAMESPACE)
    except ApiError as e:
        if e.status.code == 404:
            return None
        raise
    return {k: base64.b64decode(v).decode() for k, v in (s.data or {}).items()}


async def test_secret_objects_env_var_tls_rotation_and_collection(cluster: Cluster) -> None:
    """Story 3: foosecret's `username` reaches the container as SECRET_USERNAME (the AKS
    docs' example), a kubernetes.io/tls Secret for an ingress-style consumer.
    Story 4: a new version in Key Vault reaches the file and the synced Secret within one
    rotation interval; the env var keeps its value until the pod restarts.
    Story 8: the synced Secrets go with the pod."""
    rotating = unique("rotating")
    cluster.emulator.set_secret(VAULT, rotating, "rot-v1")
    creds = await create_sp_secret(cluster.admin)
    foo, tls = unique("foosecret"), unique("ingress-tls")
    spc = await create_spc(
        cluster.admin,
        {
            "keyvaultName": VAULT,
            "tenantId": TENANT_ID,
            "objects": objects(
                {"objectName": "username", "objectType": "secret"},
                {"objectName": rotating, "objectType": "secret", "objectAlias": "rotating"},
                {"objectName": "tls-cert", "objectType": "secret", "objectAlias": "tls-bundle"},
            ),
        },
        secret_objects=[
            {
                "secretName": foo,
                "type": "Opaque",
                "data": [
                    {"objectName": "username", "key": "username"},
                    {"objectName": "rotating", "key": "rotating"},
                ],
            },
            {
                "secretName": tls,
                "type": "kubernetes.io/tls",
                "data": [
                    {"objectName": "tls-bundle", "key": "tls.key"},
                    {"objectName": "tls-bundle", "key": "tls.crt"},
                ],
            },
        ],
    )
    name = unique("sync")
    env = [
        {
            "name": "SECRET_USERNAME",
            "valueFrom": {"secretKeyRef": {"name": foo, "key": "username"}},
        },
        {"name": "ROTATING", "valueFrom": {"secretKeyRef": {"name": foo, "key": "rotating"}}},
    ]
    await run_pod(cluster.admin, pod_manifest(name, spc, secret_ref=creds, env=env))
    r = cluster.exec(name, "sh", "-c", 'echo "$SECRET_USERNAME" "$ROTATING"')
    assert r.stdout.split() == ["app-user", "rot-v1"], r.stderr
    assert await secret_data(cluster, foo) == {"username": "app-user", "rotating": "rot-v1"}
    tls_secret = await cluster.admin.get(Secret, tls, namespace=NAMESPACE)
    assert tls_secret.type == "kubernetes.io/tls"
    tls_data = await secret_data(cluster, tls)
    assert tls_data is not None
    assert "PRIVATE KEY-----" in tls_data["tls.key"] and "CERTIFICATE" not in tls_data["tls.key"]
    assert tls_data["tls.crt"].startswith("-----BEGIN CERTIFICATE-----")

    # rotation: file and synced Secret follow Key Vault; the env var does not
    cluster.emulator.set_secret(VAULT, rotating, "rot-v2")

    async def file_rotated() -> bool:
        return cluster.exec(name, "cat", f"{MOUNT}/rotating").stdout == "rot-v2"

    async def secret_rotated() -> bool:
        data = await secret_data(cluster, foo)
        return data is not None and data.get("rotating") == "rot-v2"

    took = await eventually(file_rotated, 2 * INTERVAL + 5, "rotated file")
    await eventually(secret_rotated, INTERVAL + 5, "rotated synced Secret")
    print(f"[e2e] rotation reached the file in {took:.1f}s (interval {ROTATION_INTERVAL})")
    assert cluster.exec(name, "sh", "-c", 'echo "$ROTATING"').stdout.strip() == "rot-v1"

    # the pod goes: its synced Secrets go too
    await cluster.admin.delete(Pod, name, namespace=NAMESPACE)

    async def secrets_gone() -> bool:
        return await secret_data(cluster, foo) is None and await secret_data(cluster, tls) is None

    await eventually(secrets_gone, 30, "synced Secrets collected")


async def test_identity_without_role_failed_mount_event(cluster: Cluster) -> None:
    """Story 6: an identity without a role on the vault: the pod stays ContainerCreating and a
    FailedMount event names the object."""
    creds = await create_sp_secret(cluster.admin, NOROLE_CLIENT, NOROLE_SECRET)
    spc = await create_spc(
        cluster.admin,
        {
            "keyvaultName": VAULT,
            "tenantId": TENANT_ID,
            "objects": objects({"objectName": "db-password", "objectType": "secret"}),
        },
    )
    name = unique("norole")
    await cluster.admin.create(Pod.from_dict(pod_manifest(name, spc, secret_ref=creds)))

    async def failed_mount() -> bool:
        return any("FailedMount" in e for e in await pod_events(cluster.admin, name))

    await eventually(failed_mount, 30, "FailedMount event")
    events = [e for e in await pod_events(cluster.admin, name) if "FailedMount" in e]
    print(f"[e2e] {events[0]}")
    assert "db-password" in events[0], events
    assert "403" in events[0] or "Forbidden" in events[0], events
    assert "Key Vault Secrets User" in events[0], events  # the role to grant
    assert not any(NOROLE_SECRET in e for e in await pod_events(cluster.admin, name))
    pod = await cluster.admin.get(Pod, name, namespace=NAMESPACE)
    assert pod.status is not None and pod.status.phase == "Pending"
    await cluster.admin.delete(Pod, name, namespace=NAMESPACE, grace_period=0)


async def test_driver_restarted_mounts_stay_and_keep_rotating(cluster: Cluster) -> None:
    """Story 7: the driver restarts while a pod runs: the mount stays readable and the next
    rotation still reaches it."""
    rotating = unique("restart")
    cluster.emulator.set_secret(VAULT, rotating, "before")
    creds = await create_sp_secret(cluster.admin)
    spc = await create_spc(
        cluster.admin,
        {
            "keyvaultName": VAULT,
            "tenantId": TENANT_ID,
            "objects": objects(
                {"objectName": rotating, "objectType": "secret", "objectAlias": "v"}
            ),
        },
    )
    name = unique("restart")
    await run_pod(cluster.admin, pod_manifest(name, spc, secret_ref=creds))
    assert cluster.exec(name, "cat", f"{MOUNT}/v").stdout == "before"
    cluster.driver.stop()
    assert cluster.exec(name, "cat", f"{MOUNT}/v").stdout == "before"
    cluster.driver.start()
    assert cluster.exec(name, "cat", f"{MOUNT}/v").stdout == "before"
    cluster.emulator.set_secret(VAULT, rotating, "after")

    async def rotated() -> bool:
        return cluster.exec(name, "cat", f"{MOUNT}/v").stdout == "after"

    await eventually(rotated, 2 * INTERVAL + 10, "rotation after the driver restarted")
