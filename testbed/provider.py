"""A provider process on a unix socket: ours (`python -m provider_azure`), the upstream Go
binary, or the fake one (testbed/fake_provider.py); `.mount()` sends what the upstream driver
sends."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import grpc
import httpx2 as httpx

from secrets_store_api import provider_pb2, provider_pb2_grpc
from testbed import REPO
from testbed.ports import free_port
from testbed.process import terminate, wait_socket

# How every test, benchmark and demo runs our provider.
PROVIDER_COMMAND = (sys.executable, "-m", "provider_azure")


def provider_argv(
    socket: str | os.PathLike[str],
    *flags: str,
    healthz_port: int | None = None,
    prometheus_port: int | None = None,
) -> list[str]:
    """Our provider on `socket`; both HTTP ports free ones unless given (they bind all
    interfaces, so two providers in one namespace need their own)."""
    healthz = free_port() if healthz_port is None else healthz_port
    prometheus = free_port() if prometheus_port is None else prometheus_port
    return [
        *PROVIDER_COMMAND,
        f"--endpoint=unix://{socket}",
        f"--healthz-port={healthz}",
        f"--prometheus-port={prometheus}",
        *flags,
    ]


class ProviderProcess:
    """A provider serving on `socket`, its output in `log` (or nowhere)."""

    def __init__(
        self,
        argv: Sequence[str],
        socket: str | os.PathLike[str],
        log: str | os.PathLike[str] | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.argv = list(argv)
        self.socket = Path(socket)
        self.log = Path(log) if log is not None else None
        self.env = dict(env or {})
        self.proc: subprocess.Popen[bytes] | None = None
        self.channel: grpc.Channel | None = None

    @classmethod
    def fake(cls, socket: Path, log: Path) -> ProviderProcess:
        """The fake provider, whose answers the test picks by SPC parameters."""
        argv = [sys.executable, "-m", "testbed.fake_provider", f"unix://{socket}"]
        return cls(argv, socket, log)

    def start(self, wait: float = 15.0) -> None:
        """Starts it (a socket left by an earlier process is removed first) and waits until
        the socket accepts connections."""
        self.socket.unlink(missing_ok=True)
        with open(self.log if self.log is not None else os.devnull, "ab") as log:
            self.proc = subprocess.Popen(
                self.argv,
                env={**os.environ, **self.env},
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=REPO,
            )
        wait_socket(self.socket, self.proc, self.log, timeout=wait)

    @property
    def stub(self) -> provider_pb2_grpc.CSIDriverProviderStub:
        if self.channel is None:
            self.channel = grpc.insecure_channel(f"unix://{self.socket}")
            grpc.channel_ready_future(self.channel).result(timeout=15)
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
        response: provider_pb2.MountResponse = self.stub.Mount(request, timeout=timeout)
        return response

    def _close_channel(self) -> None:
        if self.channel is not None:
            self.channel.close()
            self.channel = None

    def stop(self) -> int | None:
        """SIGTERM (SIGKILL after 15 s); the exit status, None if it was not running."""
        self._close_channel()
        if self.proc is None:
            return None
        rc = terminate(self.proc, 15)
        self.proc = None
        return rc

    def kill(self) -> None:
        assert self.proc is not None
        self._close_channel()
        self.proc.kill()
        self.proc.wait()
        self.proc = None

    def rss_kib(self) -> int:
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return 0

    def cpu_seconds(self) -> float:
        """User + system CPU the process has used so far, all its threads (/proc/<pid>/stat)."""
        assert self.proc is not None
        stat = Path(f"/proc/{self.proc.pid}/stat").read_text()
        fields = stat[stat.rindex(")") + 2 :].split()  # after the command name, from field 3
        utime, stime = int(fields[11]), int(fields[12])  # fields 14 and 15 of proc(5)
        return (utime + stime) / os.sysconf("SC_CLK_TCK")

    def __enter__(self) -> ProviderProcess:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def ours(
    socket: str | os.PathLike[str],
    *flags: str,
    healthz_port: int | None = None,
    prometheus_port: int | None = None,
    log: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
) -> ProviderProcess:
    argv = provider_argv(socket, *flags, healthz_port=healthz_port, prometheus_port=prometheus_port)
    return ProviderProcess(argv, socket, log, env)


def upstream(
    binary: str | os.PathLike[str],
    socket: str | os.PathLike[str],
    *flags: str,
    log: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
) -> ProviderProcess:
    """The Go provider; it always binds :8898 and :8989 (run only one at a time)."""
    argv = [str(binary), f"--endpoint=unix://{socket}", *flags]
    return ProviderProcess(argv, socket, log, env)


# Where a pod's service-account volume puts the cluster CA (upstream reads it at this fixed path).
POD_CLUSTER_CA = "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt"


def with_cluster_ca(argv: Sequence[str], ca_file: str | os.PathLike[str]) -> list[str]:
    """`argv` run as in a pod: `ca_file` at POD_CLUSTER_CA, in a mount namespace of its own (a
    tmpfs over /run there, so the machine's /run is untouched). The process keeps its pid."""
    script = (
        'mount -t tmpfs -o mode=0755 tmpfs /run && d=$(dirname "$1") && mkdir -p "$d" '
        '&& cp "$0" "$1" && shift && exec "$@"'
    )
    return [
        "unshare",
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        script,
        str(ca_file),
        POD_CLUSTER_CA,
        *argv,
    ]


def mount_calls(prometheus_port: int) -> int:
    """Mount calls our provider has answered (its own grpc_request histogram's count)."""
    text = httpx.get(f"http://127.0.0.1:{prometheus_port}/metrics", timeout=5).text
    method = 'grpc_method="/v1alpha1.CSIDriverProvider/Mount"'
    return int(
        sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("grpc_request_count{") and method in line
        )
    )


def files_of(response: provider_pb2.MountResponse) -> list[tuple[str, int, bytes]]:
    return [(f.path, f.mode, f.contents) for f in response.files]


def versions_of(response: provider_pb2.MountResponse) -> list[tuple[str, str]]:
    return [(v.id, v.version) for v in response.object_version]
