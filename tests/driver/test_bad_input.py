"""Every bad-input row: the gRPC code and message users will see in pod events, and no mount
left behind."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from grpc import aio
from lightkube import ApiError, AsyncClient

from csi_driver import mounter
from csi_driver.kube import SecretProviderClassPodStatus
from secrets_store_api import csi_pb2
from testbed.driver import DriverProcess
from testbed.kubelet import Kubelet, PodVolume
from testbed.provider import ProviderProcess

from .conftest import SpcFactory, unique

INVALID = grpc.StatusCode.INVALID_ARGUMENT
UNKNOWN = grpc.StatusCode.UNKNOWN


async def _call(
    kubelet: Kubelet, req: csi_pb2.NodePublishVolumeRequest
) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(aio.AioRpcError) as info:
        await kubelet.node.NodePublishVolume(req, timeout=30)
    return info.value.code(), info.value.details() or ""


def _not_mounted(v: PodVolume) -> None:
    assert str(v.target) not in mounter.mount_points()


async def _spcps_absent(client: AsyncClient, v: PodVolume, spc: str) -> None:
    name = f"{v.pod.metadata.name}-{v.pod.metadata.namespace}-{spc}"
    with pytest.raises(ApiError) as info:
        await client.get(SecretProviderClassPodStatus, name, namespace=v.pod.metadata.namespace)
    assert info.value.status.code == 404


async def _volume(kubelet: Kubelet, namespace: str, spc: str, **kw: bool) -> PodVolume:
    pod = await kubelet.create_pod(namespace, unique("bad"), spc, **kw)
    return await kubelet.volume(pod)


ARG_ROWS: list[tuple[str, Callable[[csi_pb2.NodePublishVolumeRequest], None], str]] = [
    (
        "capability",
        lambda r: r.ClearField("volume_capability"),
        "Volume capability missing in request",
    ),
    ("volume id", lambda r: r.ClearField("volume_id"), "Volume ID missing in request"),
    ("target path", lambda r: r.ClearField("target_path"), "Target path missing in request"),
    (
        "volume context",
        lambda r: r.ClearField("volume_context"),
        "Volume attributes missing in request",
    ),
]


@pytest.mark.parametrize("row", ARG_ROWS, ids=[r[0] for r in ARG_ROWS])
async def test_missing_argument(
    row: tuple[str, Callable[[csi_pb2.NodePublishVolumeRequest], None], str],
    kubelet: Kubelet,
    driver: DriverProcess,
    make_spc: SpcFactory,
    namespace: str,
) -> None:
    _, mutate, message = row
    v = await _volume(kubelet, namespace, await make_spc({"fake.files": {"a": "1"}}))
    req = kubelet.publish_request(v)
    mutate(req)
    assert await _call(kubelet, req) == (INVALID, message)
    assert not v.target.exists()


async def test_missing_argument_order(kubelet: Kubelet, driver: DriverProcess) -> None:
    """Upstream checks capability first, then volume id, target path, context."""
    code, message = await _call(kubelet, csi_pb2.NodePublishVolumeRequest())
    assert (code, message) == (INVALID, "Volume capability missing in request")


async def test_readonly_false_checked_after_spc_lookup(
    kubelet: Kubelet,
    driver: DriverProcess,
    make_spc: SpcFactory,
    namespace: str,
    admin_client: AsyncClient,
) -> None:
    spc = await make_spc({"fake.files": {"a": "1"}})
    v = await _volume(kubelet, namespace, spc, read_only=False)
    assert await _call(kubelet, kubelet.publish_request(v)) == (
        INVALID,
        "Readonly is not true in request",
    )
    _not_mounted(v)
    await _spcps_absent(admin_client, v, spc)
    # ... and after the SPC lookup: an absent SPC wins over readOnly false
    v2 = await _volume(kubelet, namespace, "no-such-spc", read_only=False)
    code, message = await _call(kubelet, kubelet.publish_request(v2))
    assert code == UNKNOWN and message.startswith("failed to get secretproviderclass")


async def test_spc_absent(kubelet: Kubelet, driver: DriverProcess, namespace: str) -> None:
    v = await _volume(kubelet, namespace, "absent")
    before = driver.metric("node_publish_error_total", error_type="SecretProviderClassNotFound")
    code, message = await _call(kubelet, kubelet.publish_request(v))
    assert code == UNKNOWN
    assert message == (
        f"failed to get secretproviderclass {namespace}/absent, error: "
        'secretproviderclasses.secrets-store.csi.x-k8s.io "absent" not found'
    )
    assert v.target.is_dir()  # created, as upstream, but not mounted
    _not_mounted(v)
    after = driver.metric("node_publish_error_total", error_type="SecretProviderClassNotFound")
    assert after == before + 1


async def test_spc_without_provider(
    kubelet: Kubelet, driver: DriverProcess, make_spc: SpcFactory, namespace: str
) -> None:
    spc = await make_spc({"a": "b"}, provider=None)
    v = await _volume(kubelet, namespace, spc)
    assert await _call(kubelet, kubelet.publish_request(v)) == (
        UNKNOWN,
        f"provider not set in {namespace}/{spc}",
    )
    _not_mounted(v)


async def test_spc_without_parameters(
    kubelet: Kubelet, driver: DriverProcess, make_spc: SpcFactory, namespace: str
) -> None:
    spc = await make_spc(None)
    v = await _volume(kubelet, namespace, spc)
    assert await _call(kubelet, kubelet.publish_request(v)) == (
        UNKNOWN,
        f"parameters not set in {namespace}/{spc}",
    )
    _not_mounted(v)


async def test_provider_socket_absent(
    kubelet: Kubelet,
    driver: DriverProcess,
    make_spc: SpcFactory,
    namespace: str,
    admin_client: AsyncClient,
) -> None:
    spc = await make_spc({"a": "b"}, provider="azure")
    v = await _volume(kubelet, namespace, spc)
    before = driver.metric("node_publish_error_total", provider="azure")
    assert await _call(kubelet, kubelet.publish_request(v)) == (
        UNKNOWN,
        f"failed to mount secrets store objects for pod {namespace}/{v.pod.metadata.name}, "
        'err: error connecting to provider "azure": provider not found: provider "azure"',
    )
    assert v.target.is_dir()
    _not_mounted(v)
    await _spcps_absent(admin_client, v, spc)
    assert driver.metric("node_publish_error_total", provider="azure") == before + 1


PROVIDER_ROWS = [
    ("error-code", "mount request failed with provider error code AuthFailed", "AuthFailed"),
    (
        "grpc-error",
        "rpc error: code = Unknown desc = failed to mount objects, error: boom",
        "GRPCProviderError",
    ),
    ("no-versions", "missing object versions", "GRPCProviderError"),
    ("abs-path", "invalid path: must be relative path: /tmp/evil", "FileWriteError"),
    ("dotdot", "invalid path: must not contain '..': ../evil", "FileWriteError"),
    (
        "oversize",
        "rpc error: code = ResourceExhausted desc = ",
        "GRPCProviderError",
    ),
]


@pytest.mark.parametrize("row", PROVIDER_ROWS, ids=[r[0] for r in PROVIDER_ROWS])
async def test_provider_bad_answer(
    row: tuple[str, str, str],
    kubelet: Kubelet,
    driver: DriverProcess,
    make_spc: SpcFactory,
    namespace: str,
    admin_client: AsyncClient,
) -> None:
    mode, detail, error_type = row
    spc = await make_spc({"fake.mode": mode})
    v = await _volume(kubelet, namespace, spc)
    before = driver.metric("node_publish_error_total", error_type=error_type)
    code, message = await _call(kubelet, kubelet.publish_request(v))
    prefix = (
        f"failed to mount secrets store objects for pod {namespace}/{v.pod.metadata.name}, err: "
    )
    assert code == UNKNOWN
    assert message.startswith(prefix + detail), message
    if mode == "oversize":
        assert "larger than max" in message and "--max-call-recv-msg-size" in message
    _not_mounted(v)
    assert not os.path.lexists("/tmp/evil")  # noqa: ASYNC240
    assert not (v.target.parent / "evil").exists()
    await _spcps_absent(admin_client, v, spc)
    assert driver.metric("node_publish_error_total", error_type=error_type) == before + 1


async def test_target_path_is_a_file(
    kubelet: Kubelet, driver: DriverProcess, make_spc: SpcFactory, namespace: str
) -> None:
    v = await _volume(kubelet, namespace, await make_spc({"fake.files": {"a": "1"}}))
    v.target.write_text("not a dir")
    code, message = await _call(kubelet, kubelet.publish_request(v))
    assert code == grpc.StatusCode.INTERNAL
    assert (
        message == f"failed to check if target path {v.target} is mount point, err: not a directory"
    )
    assert v.target.read_text() == "not a dir"


async def test_publish_twice_is_ok(
    kubelet: Kubelet, driver: DriverProcess, make_spc: SpcFactory, namespace: str
) -> None:
    v = await _volume(kubelet, namespace, await make_spc({"fake.files": {"a": "1"}}))
    await kubelet.publish(v)
    await kubelet.publish(v)
    assert (v.target / "a").read_text() == "1"
    await kubelet.unpublish(v)
    _not_mounted(v)


async def test_unpublish_missing_path_is_ok(
    kubelet: Kubelet, driver: DriverProcess, root: Path
) -> None:
    target = root / "kubelet" / "pods" / "nope" / "volumes" / "kubernetes.io~csi" / "v" / "mount"
    await kubelet.node.NodeUnpublishVolume(
        csi_pb2.NodeUnpublishVolumeRequest(volume_id="csi-x", target_path=str(target)), timeout=10
    )
    await kubelet.node.NodeUnpublishVolume(
        csi_pb2.NodeUnpublishVolumeRequest(volume_id="csi-x", target_path=str(target)), timeout=10
    )


async def test_unpublish_never_follows_symlinks(
    kubelet: Kubelet, driver: DriverProcess, make_spc: SpcFactory, namespace: str, root: Path
) -> None:
    outside = root / "outside"
    outside.mkdir(exist_ok=True)
    (outside / "keep").write_text("keep")
    v = await _volume(kubelet, namespace, await make_spc({"fake.files": {"a": "1"}}))
    await kubelet.publish(v)
    os_link = v.target / "escape"
    os_link.symlink_to(outside)
    await kubelet.unpublish(v)
    assert (outside / "keep").read_text() == "keep"
    assert not v.target.exists()
    # a target that is itself a symlink is removed, never followed
    v.target.symlink_to(outside)
    await kubelet.unpublish(v)
    assert (outside / "keep").read_text() == "keep"
    assert not v.target.is_symlink()


async def test_unpublish_unmounted_dir(
    kubelet: Kubelet, driver: DriverProcess, namespace: str, make_spc: SpcFactory
) -> None:
    v = await _volume(kubelet, namespace, await make_spc({"fake.files": {"a": "1"}}))
    v.target.mkdir()
    await kubelet.unpublish(v)
    assert not v.target.exists()


async def test_concurrent_operation_on_same_target_is_aborted(
    kubelet: Kubelet, driver: DriverProcess, make_spc: SpcFactory, namespace: str
) -> None:
    spc = await make_spc({"fake.mode": "slow", "fake.delay": "1"})
    v = await _volume(kubelet, namespace, spc)
    first = asyncio.create_task(kubelet.publish(v))
    await asyncio.sleep(0.3)
    code, message = await _call(kubelet, kubelet.publish_request(v))
    assert code == grpc.StatusCode.ABORTED
    assert str(v.target) in message
    with pytest.raises(aio.AioRpcError) as info:
        await kubelet.unpublish(v)
    assert info.value.code() == grpc.StatusCode.ABORTED
    await first
    await kubelet.unpublish(v)


async def test_provider_killed_mid_publish(
    kubelet: Kubelet,
    driver: DriverProcess,
    make_spc: SpcFactory,
    namespace: str,
    provider_dirs: tuple[Path, Path],
    root: Path,
    admin_client: AsyncClient,
) -> None:
    doomed = ProviderProcess.fake(provider_dirs[0] / "doomed.sock", root / "doomed.log")
    doomed.start()
    try:
        spc = await make_spc({"fake.mode": "hang"}, provider="doomed")
        v = await _volume(kubelet, namespace, spc)
        task = asyncio.create_task(_call(kubelet, kubelet.publish_request(v)))
        await asyncio.sleep(0.5)
        assert str(v.target) in mounter.mount_points()  # mounted, waiting on the provider
        doomed.kill()
        code, message = await asyncio.wait_for(task, 20)
        assert code == UNKNOWN
        assert "failed to mount secrets store objects" in message and "Unavailable" in message
        _not_mounted(v)
        await _spcps_absent(admin_client, v, spc)
    finally:
        doomed.stop()
        (provider_dirs[0] / "doomed.sock").unlink(missing_ok=True)
