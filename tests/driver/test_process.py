"""The driver process as an operator sees it: graceful SIGTERM, JSON logs, metric exposition."""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path

from lightkube import AsyncClient

from csi_driver import mounter
from tests.kube.kubelet import Kubelet

from .conftest import SpcFactory, unique
from .harness import DriverProcess, ProviderProcess


async def test_sigterm_lets_an_inflight_publish_finish(
    root: Path,
    provider_dirs: tuple[Path, Path],
    driver_kubeconfig: Path,
    fake_provider: ProviderProcess,
    admin_client: AsyncClient,
    make_spc: SpcFactory,
    namespace: str,
) -> None:
    d = DriverProcess(
        root,
        kubeconfig=driver_kubeconfig,
        provider_dirs=provider_dirs,
        name="term-driver",
        extra=("--log-format-json",),
    )
    d.start()
    kubelet = Kubelet(admin_client, root / "kubelet-term", str(d.socket))
    try:
        spc = await make_spc({"fake.mode": "slow", "fake.delay": "1"})
        pod = await kubelet.create_pod(namespace, unique("term"), spc)
        vol = await kubelet.volume(pod)
        publish = asyncio.create_task(kubelet.publish(vol))
        await asyncio.sleep(0.4)
        assert d.proc is not None
        d.proc.send_signal(signal.SIGTERM)
        await publish  # completes: the server drains before it stops
        assert await asyncio.to_thread(d.proc.wait, 15) == 0
        d.proc = None
        assert not d.socket.exists()
        assert str(vol.target) in mounter.mount_points()  # mounts outlive the driver
        lines = [json.loads(line) for line in d.logs().splitlines() if line.startswith("{")]
        assert lines and all({"ts", "level", "msg", "caller"} <= set(entry) for entry in lines)
        assert any("received shutdown signal" in entry["msg"] for entry in lines)
        d.start()
        await kubelet.close()
        kubelet = Kubelet(admin_client, root / "kubelet-term", str(d.socket))
        await kubelet.unpublish(vol)
        assert str(vol.target) not in mounter.mount_points()
    finally:
        await kubelet.close()
        if d.proc is not None:
            d.stop()


def test_metric_exposition_as_upstream(driver: DriverProcess) -> None:
    text = driver.metrics()
    for name in (
        "node_publish_total",
        "node_publish_error_total",
        "node_unpublish_total",
        "node_unpublish_error_total",
    ):
        assert f"# TYPE {name} counter" in text
    assert "_created" not in text  # upstream's exporter has no *_created series
