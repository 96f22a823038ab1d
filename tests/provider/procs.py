"""Run a provider process (ours or the upstream Go binary) on a unix socket, and call Mount."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from secrets_store_api import provider_pb2, provider_pb2_grpc

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class ProviderProcess:
    """A provider serving on `socket`; `.mount()` sends what the upstream driver sends."""

    argv: list[str]
    socket: str
    env: dict[str, str] = field(default_factory=dict)
    log_path: str | None = None
    proc: subprocess.Popen[bytes] | None = None
    channel: grpc.Channel | None = None

    def start(self, wait: float = 15.0) -> ProviderProcess:
        if os.path.exists(self.socket):
            os.remove(self.socket)
        log = open(self.log_path or os.devnull, "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            self.argv,
            env={**os.environ, **self.env},
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
        deadline = time.monotonic() + wait
        while not os.path.exists(self.socket):
            if self.proc.poll() is not None:
                raise RuntimeError(f"provider exited with {self.proc.returncode}: {self.argv}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"no socket at {self.socket}")
            time.sleep(0.02)
        self.channel = grpc.insecure_channel(f"unix://{self.socket}")
        grpc.channel_ready_future(self.channel).result(timeout=wait)
        return self

    @property
    def stub(self) -> provider_pb2_grpc.CSIDriverProviderStub:
        assert self.channel is not None
        return provider_pb2_grpc.CSIDriverProviderStub(self.channel)

    def mount(
        self,
        attributes: dict[str, str],
        secrets: dict[str, str] | None = None,
        permission: str = "420",
        target: str = "/var/lib/kubelet/pods/uid/volumes/kubernetes.io~csi/secrets/mount",
        timeout: float = 60.0,
    ) -> provider_pb2.MountResponse:
        request = provider_pb2.MountRequest(
            attributes=json.dumps(attributes),
            secrets=json.dumps(secrets) if secrets is not None else "null",
            target_path=target,
            permission=permission,
        )
        return self.stub.Mount(request, timeout=timeout)

    def stop(self) -> int | None:
        if self.channel is not None:
            self.channel.close()
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def rss_kib(self) -> int:
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return 0

    def __enter__(self) -> ProviderProcess:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def ours(
    socket: str, *flags: str, healthz_port: int = 18989, prometheus_port: int = 18898, **kw: Any
) -> ProviderProcess:
    return ProviderProcess(
        [
            sys.executable,
            "-m",
            "provider_azure",
            f"--endpoint=unix://{socket}",
            f"--healthz-port={healthz_port}",
            f"--prometheus-port={prometheus_port}",
            *flags,
        ],
        socket,
        **kw,
    )


def upstream(binary: str | Path, socket: str, *flags: str, **kw: Any) -> ProviderProcess:
    """The Go provider; it always binds :8898 and :8989 (run only one at a time)."""
    return ProviderProcess([str(binary), f"--endpoint=unix://{socket}", *flags], socket, **kw)


def files_of(response: provider_pb2.MountResponse) -> list[tuple[str, int, bytes]]:
    return [(f.path, f.mode, f.contents) for f in response.files]


def versions_of(response: provider_pb2.MountResponse) -> list[tuple[str, str]]:
    return [(v.id, v.version) for v in response.object_version]
