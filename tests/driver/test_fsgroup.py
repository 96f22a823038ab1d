"""fsGroup through the real driver process and the kube-apiserver: the capability kubelet asks
for, a publish carrying volume_mount_group (what kubelet sends for a pod with fsGroup when the
CSIDriver has fsGroupPolicy File), a republish, and a bad value refused before anything is
mounted."""

from __future__ import annotations

import os

import grpc
import pytest
from lightkube import AsyncClient

from csi_driver import mounter
from secrets_store_api import csi_pb2
from testbed.driver import DriverProcess
from testbed.kubelet import Kubelet, rpc_error

from .conftest import SpcFactory, unique

GID = 2000


async def test_capability_is_advertised(kubelet: Kubelet, driver: DriverProcess) -> None:
    caps = await kubelet.node.NodeGetCapabilities(csi_pb2.NodeGetCapabilitiesRequest())
    kinds = [c.rpc.type for c in caps.capabilities]
    assert kinds == [csi_pb2.NodeServiceCapability.RPC.VOLUME_MOUNT_GROUP]


async def test_publish_with_fs_group_makes_the_volume_group_owned(
    kubelet: Kubelet, driver: DriverProcess, make_spc: SpcFactory, namespace: str
) -> None:
    spc = await make_spc({"keyvaultName": "kv", "fake.files": {"db/password": "s3cret"}})
    vol = await kubelet.volume(await kubelet.create_pod(namespace, unique("fsg"), spc))
    req = kubelet.publish_request(vol)
    req.volume_capability.mount.volume_mount_group = str(GID)
    await kubelet.node.NodePublishVolume(req, timeout=30)
    try:
        target = vol.target
        assert target.stat().st_gid == GID  # the tmpfs root
        data = target / os.readlink(target / "..data")
        for path in (data, data / "db", data / "db" / "password"):
            assert path.stat().st_gid == GID, path
        assert mounter.mount_group(str(target)) == GID
        await kubelet.node.NodePublishVolume(req, timeout=30)  # a republish changes nothing
        assert (target / "db" / "password").stat().st_gid == GID
    finally:
        await kubelet.unpublish(vol)


async def test_the_kubelet_stand_in_sends_the_pods_fs_group(
    kubelet: Kubelet, driver: DriverProcess, make_spc: SpcFactory, namespace: str
) -> None:
    """testbed/kubelet.py as kubelet 1.37 does: the pod's fsGroup in volume_mount_group (the
    driver advertises VOLUME_MOUNT_GROUP); nothing for a pod without one."""
    spc = await make_spc({"keyvaultName": "kv", "fake.files": {"password": "s3cret"}})
    member = await kubelet.volume(
        await kubelet.create_pod(namespace, unique("fsg"), spc, fs_group=GID)
    )
    plain = await kubelet.volume(await kubelet.create_pod(namespace, unique("nofsg"), spc))
    assert (member.mount_group, plain.mount_group) == (str(GID), "")
    for vol in (member, plain):
        await kubelet.publish(vol)
    try:
        assert (member.target / "password").stat().st_gid == GID
        assert mounter.mount_group(str(member.target)) == GID
        assert (plain.target / "password").stat().st_gid == 0
        assert mounter.mount_group(str(plain.target)) is None
    finally:
        for vol in (member, plain):
            await kubelet.unpublish(vol)


@pytest.mark.parametrize("value", ["abc", "-1", "2147483648"])
async def test_bad_mount_group_is_refused_before_anything_is_mounted(
    kubelet: Kubelet,
    driver: DriverProcess,
    make_spc: SpcFactory,
    namespace: str,
    admin_client: AsyncClient,
    value: str,
) -> None:
    spc = await make_spc({"keyvaultName": "kv", "fake.files": {"a": "b"}})
    vol = await kubelet.volume(await kubelet.create_pod(namespace, unique("fsg"), spc))
    req = kubelet.publish_request(vol)
    req.volume_capability.mount.volume_mount_group = value
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await kubelet.node.NodePublishVolume(req, timeout=30)
    code, message = rpc_error(e.value)
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert message.startswith(f"volume_capability.mount.volume_mount_group '{value}'")
    assert str(vol.target) not in mounter.mount_points()
    assert not vol.target.exists()
