"""Issue 15 item 5 on a real node: kubelet 1.37 hands the pod's fsGroup to our driver
(VOLUME_MOUNT_GROUP), the driver makes the volume group-owned by it, a non-root container in
that group reads a `0440` secret, the same container without the fsGroup cannot, and a
rotation keeps the group."""

from __future__ import annotations

import asyncio
from typing import Any

from lightkube.resources.storage_v1 import CSIDriver

from testbed.emulator import TENANT_ID

from .conftest import (
    DRIVER,
    ROTATION_INTERVAL,
    VAULT,
    Cluster,
    create_sp_secret,
    create_spc,
    objects,
    pod_manifest,
    run_pod,
    unique,
)

MOUNT = "/mnt/secrets-store"
INTERVAL = float(ROTATION_INTERVAL.rstrip("s"))
UID, GID, FS_GROUP = 1000, 1000, 2000


def _with_security(manifest: dict[str, Any], fs_group: int | None) -> dict[str, Any]:
    # runAsGroup too: a uid absent from the image's /etc/passwd otherwise runs with gid 0,
    # and group root could read a root:root 0440 file.
    sc: dict[str, Any] = {"runAsUser": UID, "runAsGroup": GID}
    if fs_group is not None:
        sc["fsGroup"] = fs_group
    manifest["spec"]["securityContext"] = sc
    return manifest


def _mount_options(path: str) -> list[str]:
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            if fields[4] == path:
                return fields[-1].split(",")  # the superblock options (tmpfs: size, mode, gid)
    raise AssertionError(f"{path} is not a mount")


async def test_fs_group_reads_0440_secret_without_it_denied_rotation_keeps_group(
    cluster: Cluster,
) -> None:
    secret = unique("fsg-secret")
    cluster.emulator.set_secret(VAULT, secret, "fsg-v1")
    creds = await create_sp_secret(cluster.admin)
    spc = await create_spc(
        cluster.admin,
        {
            "keyvaultName": VAULT,
            "tenantId": TENANT_ID,
            "objects": objects(
                {
                    "objectName": secret,
                    "objectType": "secret",
                    "objectAlias": "password",
                    "filePermission": "0440",
                }
            ),
        },
    )
    member, outsider = unique("fsg"), unique("nofsg")
    pod, other = await asyncio.gather(
        run_pod(cluster.admin, _with_security(pod_manifest(member, spc, secret_ref=creds), 2000)),
        run_pod(cluster.admin, _with_security(pod_manifest(outsider, spc, secret_ref=creds), None)),
    )
    file = f"{MOUNT}/password"

    # what kubelet sent: the driver logs the volume_mount_group it received
    target = str(cluster.target(pod))
    published = [
        line
        for line in cluster.driver.logs().splitlines()
        if "node publish volume complete" in line and f"target={target} " in line
    ]
    assert published and all(f"fsGroup={FS_GROUP}" in line for line in published), published
    assert f"gid={FS_GROUP}" in _mount_options(target)  # the tmpfs root, on the node
    assert not any(o.startswith("gid=") for o in _mount_options(str(cluster.target(other))))

    ident = cluster.exec(member, "id")
    print(f"[e2e] with fsGroup: {ident.stdout.strip()}")
    assert str(FS_GROUP) in ident.stdout.split("groups=")[1], ident.stdout  # supplementary
    r = cluster.exec(member, "cat", file)
    assert (r.returncode, r.stdout) == (0, "fsg-v1"), r.stderr
    st = cluster.exec(member, "stat", "-L", "-c", "%u %g %a", file)
    assert st.stdout.split() == ["0", str(FS_GROUP), "440"], st.stdout + st.stderr

    denied = cluster.exec(outsider, "cat", file)
    print(f"[e2e] without fsGroup: {denied.stderr.strip()}")
    assert denied.returncode != 0 and "Permission denied" in denied.stderr, denied
    st = cluster.exec(outsider, "stat", "-L", "-c", "%u %g %a", file)
    assert st.stdout.split() == ["0", "0", "440"], st.stdout + st.stderr

    # rotation: the new value, still root:2000 0440, still readable by the group
    cluster.emulator.set_secret(VAULT, secret, "fsg-v2")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 2 * INTERVAL + 5
    while True:
        r = cluster.exec(member, "cat", file)
        if r.returncode == 0 and r.stdout == "fsg-v2":
            break
        assert loop.time() < deadline, f"not rotated: {r.returncode} {r.stdout!r} {r.stderr}"
        await asyncio.sleep(0.25)
    st = cluster.exec(member, "stat", "-L", "-c", "%u %g %a", file)
    assert st.stdout.split() == ["0", str(FS_GROUP), "440"], st.stdout + st.stderr
    assert cluster.exec(outsider, "cat", file).returncode != 0


async def test_kubelet_sends_fs_group_whatever_the_fs_group_policy(cluster: Cluster) -> None:
    """kubelet 1.37 (pkg/volume/csi/csi_mounter.go) passes the pod's fsGroup to a driver with
    VOLUME_MOUNT_GROUP whatever the CSIDriver's fsGroupPolicy: seen here with `None`, so a
    cluster applying upstream's CSIDriver manifest (no policy) still gets group ownership."""
    creds = await create_sp_secret(cluster.admin)
    spc = await create_spc(
        cluster.admin,
        {
            "keyvaultName": VAULT,
            "tenantId": TENANT_ID,
            "objects": objects({"objectName": "username", "objectType": "secret"}),
        },
    )
    patch = {"spec": {"fsGroupPolicy": "None"}}
    patched = await cluster.admin.patch(CSIDriver, DRIVER, patch)
    try:
        assert patched.spec is not None and patched.spec.fsGroupPolicy == "None"
        await asyncio.sleep(2)  # kubelet's CSIDriver informer
        name = unique("fsg-none")
        pod = await run_pod(
            cluster.admin, _with_security(pod_manifest(name, spc, secret_ref=creds), FS_GROUP)
        )
    finally:
        await cluster.admin.patch(CSIDriver, DRIVER, {"spec": {"fsGroupPolicy": "File"}})
    target = str(cluster.target(pod))
    assert f"gid={FS_GROUP}" in _mount_options(target)
    st = cluster.exec(name, "stat", "-L", "-c", "%g", f"{MOUNT}/username")
    assert st.stdout.strip() == str(FS_GROUP), st.stdout + st.stderr
