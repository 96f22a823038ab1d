"""Runs the driver as a real process, the way a node runs it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx2 as httpx

from testbed import REPO
from testbed.ports import free_port
from testbed.process import terminate, wait_socket


class DriverProcess:
    """The driver on `<root>/<name>/csi.sock`, its log `<root>/<name>.log`, its metrics on a
    free loopback port; kubeconfig only from --kubeconfig (never the environment's)."""

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
        wait_socket(self.socket, self.proc, self.log)

    def stop(self) -> int:
        assert self.proc is not None
        rc = terminate(self.proc, 15)
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
