"""The driver process as an operator sees it: graceful SIGTERM, JSON logs, metric exposition."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

from lightkube import AsyncClient

from csi_driver import mounter
from testbed.driver import DriverProcess
from testbed.kubelet import Kubelet
from testbed.provider import ProviderProcess

from .conftest import SpcFactory, unique


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


def test_busy_metrics_port_fails_before_the_socket(tmp_path: Path) -> None:
    """A --metrics-addr already in use: the driver says so in one line and exits before its
    CSI socket exists (a socket left by a dead driver looks like a live one to whoever waits
    for it: kubelet's registrar, or the tests' harness)."""
    sock = tmp_path / "csi.sock"
    env = {**os.environ, "KUBECONFIG": str(tmp_path / "no-such-kubeconfig")}
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        addr = f"127.0.0.1:{busy.getsockname()[1]}"
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "csi_driver",
                f"--endpoint=unix://{sock}",
                "--nodeid=node-busy",
                f"--provider-volume={tmp_path}",
                f"--metrics-addr={addr}",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
        )
    assert done.returncode == 1, done.stderr
    assert f"--metrics-addr={addr}" in done.stderr and "in use" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    assert not sock.exists()
