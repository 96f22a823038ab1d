"""Runs the driver (and the fake provider) as real processes, the way a node runs them."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx2 as httpx

from tests.kube.controlplane import REPO, free_port


def _wait_socket(path: Path, proc: subprocess.Popen[bytes], log: Path, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists():
            with socket.socket(socket.AF_UNIX) as s:
                try:
                    s.connect(str(path))
                    return
                except OSError:
                    pass  # a stale socket from an earlier process: not ours yet
        if proc.poll() is not None:
            raise RuntimeError(f"process exited ({proc.returncode}): {log.read_text()[-2000:]}")
        time.sleep(0.02)
    raise TimeoutError(f"{path} did not appear: {log.read_text()[-2000:]}")


class DriverProcess:
    def __init__(
        self,
        root: Path,
        *,
        kubeconfig: Path | None,
        provider_dirs: tuple[Path, Path],
        node_id: str = "node-1",
        extra: tuple[str, ...] = (),
        name: str = "driver",
    ) -> None:
        self.root = root
        self.socket = root / name / "csi.sock"
        self.log = root / f"{name}.log"
        self.kubeconfig = kubeconfig
        self.provider_dirs = provider_dirs
        self.node_id = node_id
        self.extra = extra
        self.metrics_port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def argv(self) -> list[str]:
        args = [
            sys.executable,
            "-m",
            "csi_driver",
            f"--endpoint=unix://{self.socket}",
            f"--nodeid={self.node_id}",
            f"--provider-volume={self.provider_dirs[0]}",
            "--additional-provider-volume-paths",
            str(self.provider_dirs[1]),
            f"--metrics-addr=127.0.0.1:{self.metrics_port}",
            "--enable-secret-rotation=false",
            "--rotation-poll-interval=2m",
            "-v=2",
        ]
        if self.kubeconfig is not None:
            args.append(f"--kubeconfig={self.kubeconfig}")
        return args + list(self.extra)

    def start(self) -> None:
        env = dict(os.environ)
        env["KUBECONFIG"] = str(self.root / "no-such-kubeconfig")
        env.pop("KUBERNETES_SERVICE_HOST", None)
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                self.argv(), stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env=env
            )
        _wait_socket(self.socket, self.proc, self.log)

    def stop(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = self.proc.wait()
        self.proc = None
        return rc

    def metrics(self) -> str:
        return httpx.get(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5).text

    def metric(self, name: str, **labels: str) -> float:
        total = 0.0
        for line in self.metrics().splitlines():
            if not line.startswith(name + "{") and not line.startswith(name + " "):
                continue
            if all(f'{k}="{v}"' in line for k, v in labels.items()):
                total += float(line.rsplit(" ", 1)[1])
        return total

    def logs(self) -> str:
        return self.log.read_text(errors="replace")


class ProviderProcess:
    def __init__(self, socket: Path, log: Path, argv: list[str] | None = None) -> None:
        self.socket = socket
        self.log = log
        self.argv = argv or [
            sys.executable,
            "-m",
            "tests.driver.fake_provider",
            f"unix://{socket}",
        ]
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                self.argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=REPO,
            )
        _wait_socket(self.socket, self.proc, self.log)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()
        self.proc = None
