"""The seeds' stories on a real node: real pods, kubelet mounting our volumes, containers
reading them (`kubectl exec`), our driver and provider behind them, the emulator as Key Vault."""

from __future__ import annotations

import asyncio
import time

from lightkube.resources.core_v1 import Pod

from csi_driver.kube import SecretProviderClassPodStatus
from testbed.emulator import MI_USER_CLIENT_ID, TENANT_ID

from .conftest import (
    NAMESPACE,
    VAULT,
    WI_CLIENT,
    Cluster,
    create_sp_secret,
    create_spc,
    objects,
    pod_manifest,
    run_pod,
    unique,
)

MOUNT = "/mnt/secrets-store"


def _mounted(path: str) -> bool:
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == path for line in f)


async def test_inline_volume_files_modes_read_only(cluster: Cluster) -> None:
    """Story 1: a secret under its objectAlias, a key, a cert, and the cert's secret."""
    creds = await create_sp_secret(cluster.admin)
    spc = await create_spc(
        cluster.admin,
        {
            "keyvaultName": VAULT,
            "tenantId": TENANT_ID,
            "objects": objects(
                {"objectName": "db-password", "objectType": "secret", "objectAlias": "db-pass"},
                {"objectName": "signing-key", "objectType": "key"},
                {"objectName": "tls-cert", "objectType": "cert"},
                {"objectName": "tls-cert", "objectType": "secret", "objectAlias": "tls-bundle"},
            ),
        },
    )
    name = unique("inline")
    pod = await run_pod(cluster.admin, pod_manifest(name, spc, secret_ref=creds))

    def cat(file: str) -> str:
        r = cluster.exec(name, "cat", f"{MOUNT}/{file}")
        assert r.returncode == 0, r.stderr
        return r.stdout

    assert cat("db-pass") == "hunter2-from-keyvault"
    assert cat("signing-key").startswith("-----BEGIN PUBLIC KEY-----")
    cert = cat("tls-cert")
    assert cert.startswith("-----BEGIN CERTIFICATE-----")
    assert cert.count("BEGIN CERTIFICATE") == 1  # cert: the leaf only
    bundle = cat("tls-bundle")
    assert "PRIVATE KEY-----" in bundle and "BEGIN CERTIFICATE" in bundle
    ls = cluster.exec(name, "ls", MOUNT)
    assert sorted(ls.stdout.split()) == ["db-pass", "signing-key", "tls-bundle", "tls-cert"]
    # modes: files 0644 (the default filePermission), reached through the ..data symlink
    modes = cluster.exec(
        name, "stat", "-L", "-c", "%a %n", *(f"{MOUNT}/{f}" for f in ls.stdout.split())
    )
    assert {line.split()[0] for line in modes.stdout.splitlines()} == {"644"}, modes.stdout
    # read-only in the container
    touch = cluster.exec(name, "touch", f"{MOUNT}/new-file")
    assert touch.returncode != 0 and "Read-only file system" in touch.stderr
    mounts = cluster.exec(name, "cat", "/proc/mounts").stdout
    line = next(x for x in mounts.splitlines() if x.split()[1] == MOUNT)
    assert line.split()[2] == "tmpfs" and "ro" in line.split()[3].split(","), line
    # on the node: the target is a tmpfs mount, the SPCPS names the pod and the objects
    assert _mounted(str(cluster.target(pod)))
    spcps = await cluster.admin.get(
        SecretProviderClassPodStatus, f"{name}-{NAMESPACE}-{spc}", namespace=NAMESPACE
    )
    status = spcps.to_dict()["status"]
    assert status["podName"] == name and status["mounted"] is True
    assert [o["id"] for o in status["objects"]] == [
        "cert/tls-cert",
        "key/signing-key",
        "secret/db-password",
        "secret/tls-cert",
    ]


async def test_service_principal_node_publish_secret_ref(cluster: Cluster) -> None:
    """Story 2a: the service principal's credentials come from nodePublishSecretRef."""
    creds = await create_sp_secret(cluster.admin)
    spc = await create_spc(
        cluster.admin,
        {
            "keyvaultName": VAULT,
            "tenantId": TENANT_ID,
            "objects": objects({"objectName": "username", "objectType": "secret"}),
        },
    )
    name = unique("sp")
    await run_pod(cluster.admin, pod_manifest(name, spc, secret_ref=creds))
    r = cluster.exec(name, "cat", f"{MOUNT}/username")
    assert (r.returncode, r.stdout) == (0, "app-user"), r.stderr
    assert "e2e-sp-secret" not in cluster.driver.logs()


async def test_workload_identity_real_token(cluster: Cluster) -> None:
    """Story 2b: the pod's real service-account token (CSIDriver tokenRequests), verified by
    the emulator against this apiserver's JWKS, exchanged for a Key Vault token."""
    spc = await create_spc(
        cluster.admin,
        {
            "keyvaultName": VAULT,
            "tenantId": TENANT_ID,
            "clientID": WI_CLIENT,
            "objects": objects({"objectName": "db-password", "objectType": "secret"}),
        },
    )
    name = unique("wi")
    await run_pod(cluster.admin, pod_manifest(name, spc))
    r = cluster.exec(name, "cat", f"{MOUNT}/db-password")
    assert (r.returncode, r.stdout) == (0, "hunter2-from-keyvault"), r.stderr
    grants = cluster.emulator.requests(path=f"/{TENANT_ID}/oauth2/v2.0/token")
    assert grants, "no token request reached the emulator"


async def test_pod_deleted_unmounted_and_collected(cluster: Cluster) -> None:
    """Story 8: deleting the pod unmounts the volume, removes its directory, and the SPCPS
    is garbage-collected."""
    creds = await create_sp_secret(cluster.admin)
    spc = await create_spc(
        cluster.admin,
        {
            "keyvaultName": VAULT,
            "tenantId": TENANT_ID,
            "objects": objects({"objectName": "db-password", "objectType": "secret"}),
        },
    )
    name = unique("gone")
    pod = await run_pod(cluster.admin, pod_manifest(name, spc, secret_ref=creds))
    target = cluster.target(pod)
    assert _mounted(str(target))
    spcps_name = f"{name}-{NAMESPACE}-{spc}"
    await cluster.admin.get(SecretProviderClassPodStatus, spcps_name, namespace=NAMESPACE)
    started = time.monotonic()
    await cluster.admin.delete(Pod, name, namespace=NAMESPACE)
    deadline = time.monotonic() + 30
    gone = {"pod": False, "mount": False, "dir": False, "spcps": False}
    while time.monotonic() < deadline and not all(gone.values()):
        pods = [p async for p in cluster.admin.list(Pod, namespace=NAMESPACE)]
        gone["pod"] = all(p.metadata.name != name for p in pods if p.metadata)
        gone["mount"] = not _mounted(str(target))
        gone["dir"] = not target.parent.exists()
        spcps = [
            s.metadata.name
            async for s in cluster.admin.list(SecretProviderClassPodStatus, namespace=NAMESPACE)
        ]
        gone["spcps"] = spcps_name not in spcps
        await asyncio.sleep(0.2)
    assert all(gone.values()), f"after {time.monotonic() - started:.1f}s: {gone}"


async def test_managed_identity_system_and_user_assigned(cluster: Cluster) -> None:
    """Story 2c: the node's managed identity through IMDS (169.254.169.254, the emulator),
    system-assigned and user-assigned (the AKS kubelet-identity case)."""
    for user_assigned in ("", MI_USER_CLIENT_ID):
        params = {
            "keyvaultName": "kv-test",
            "tenantId": TENANT_ID,
            "useVMManagedIdentity": "true",
            "objects": objects({"objectName": "plain", "objectType": "secret"}),
        }
        if user_assigned:
            params["userAssignedIdentityID"] = user_assigned
        spc = await create_spc(cluster.admin, params)
        name = unique("mi")
        await run_pod(cluster.admin, pod_manifest(name, spc))
        r = cluster.exec(name, "cat", f"{MOUNT}/plain")
        assert (r.returncode, r.stdout) == (0, "plain-v2"), r.stderr
