"""Process lifecycle: restart recovery from this node's SPCPS, stale sockets, SIGTERM."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

from lightkube import AsyncClient

from csi_driver import mounter
from testbed.driver import DriverProcess
from testbed.kubelet import Kubelet

from .conftest import SpcFactory, unique


async def test_restart_finds_existing_mounts(
    root: Path,
    provider_dirs: tuple[Path, Path],
    driver_kubeconfig: Path,
    fake_provider: object,
    admin_client: AsyncClient,
    make_spc: SpcFactory,
    namespace: str,
) -> None:
    d = DriverProcess(
        root,
        kubeconfig=driver_kubeconfig,
        provider_dirs=provider_dirs,
        node_id="node-restart",
        name="restart-driver",
    )
    d.start()
    kubelet = Kubelet(admin_client, root / "kubelet-restart", str(d.socket))
    try:
        spc = await make_spc({"fake.files": {"a": "1"}})
        vols = []
        for _ in range(2):
            pod = await kubelet.create_pod(namespace, unique("restart"), spc)
            vol = await kubelet.volume(pod)
            await kubelet.publish(vol)
            vols.append(vol)

        # crash: the socket file stays behind, the mounts stay in place
        assert d.proc is not None
        d.proc.send_signal(signal.SIGKILL)
        d.proc.wait()
        d.proc = None
        assert d.socket.exists()
        for v in vols:
            assert str(v.target) in mounter.mount_points()

        d.start()  # removes the stale socket and serves again
        for _ in range(100):
            if "recovered 2 existing mounts on node node-restart" in d.logs():
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError(d.logs()[-2000:])
        await kubelet.close()
        kubelet = Kubelet(admin_client, root / "kubelet-restart", str(d.socket))
        for v in vols:
            await kubelet.publish(v)  # already mounted: OK, content untouched
            assert (v.target / "a").read_text() == "1"
            await kubelet.unpublish(v)
            assert not v.target.exists()
    finally:
        await kubelet.close()
        if d.proc is not None:
            assert d.stop() == 0
    assert not d.socket.exists()
    assert "received shutdown signal" in d.logs()


async def test_serves_without_api_server_and_publish_fails_clearly(
    root: Path,
    provider_dirs: tuple[Path, Path],
    admin_client: AsyncClient,
    namespace: str,
    make_spc: SpcFactory,
) -> None:
    d = DriverProcess(root, kubeconfig=None, provider_dirs=provider_dirs, name="nokube-driver")
    d.start()
    kubelet = Kubelet(admin_client, root / "kubelet-nokube", str(d.socket))
    try:
        import grpc
        import pytest
        from grpc import aio

        spc = await make_spc({"fake.files": {"a": "1"}})
        pod = await kubelet.create_pod(namespace, unique("nokube"), spc)
        vol = await kubelet.volume(pod)
        with pytest.raises(aio.AioRpcError) as info:
            await kubelet.publish(vol)
        assert info.value.code() == grpc.StatusCode.UNKNOWN
        assert info.value.details() == (
            f"failed to get secretproviderclass {namespace}/{spc}, error: "
            "no Kubernetes API configured (in-cluster config or --kubeconfig)"
        )
        assert str(vol.target) not in mounter.mount_points()
    finally:
        await kubelet.close()
        assert d.stop() == 0
