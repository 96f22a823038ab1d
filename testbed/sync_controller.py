"""The SecretSync controller as a process (`python -m sync_controller`), for tests and
benchmarks: its kubeconfig, provider directory, poll and lease timings."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from testbed.ports import free_port
from testbed.process import terminate

COMMAND = (sys.executable, "-m", "sync_controller")


class SyncControllerProcess:
    def __init__(
        self,
        kubeconfig: Path,
        provider_dir: Path,
        log: Path,
        *flags: str,
        pod_name: str = "sync-controller-0",
        pod_uid: str = "00000000-0000-4000-8000-0000000000aa",
    ) -> None:
        self.argv: Sequence[str] = [
            *COMMAND,
            f"--kubeconfig={kubeconfig}",
            f"--provider-volume={provider_dir}",
            f"--metrics-bind-address=127.0.0.1:{free_port()}",
            f"--health-probe-bind-address=127.0.0.1:{free_port()}",
            *flags,
        ]
        self.log = log
        self._made = (kubeconfig, provider_dir, flags, pod_name, pod_uid)
        self.env = {
            **os.environ,
            "SYNC_CONTROLLER_POD_NAME": pod_name,
            "SYNC_CONTROLLER_POD_UID": pod_uid,
            "SYNC_CONTROLLER_POD_NAMESPACE": "kube-system",
        }
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def identity(self) -> str:
        """Its Lease holder identity (`<pod name>_<pid>`), once started."""
        assert self.proc is not None
        return f"{self.env['SYNC_CONTROLLER_POD_NAME']}_{self.proc.pid}"

    def again(self, log: Path) -> SyncControllerProcess:
        """Another process as this one (its flags, its pod name), logging to `log`."""
        kubeconfig, provider_dir, flags, pod_name, pod_uid = self._made
        return SyncControllerProcess(
            kubeconfig, provider_dir, log, *flags, pod_name=pod_name, pod_uid=pod_uid
        )

    def start(self) -> SyncControllerProcess:
        out = open(self.log, "ab")  # noqa: SIM115 (closed with the process)
        self.proc = subprocess.Popen(self.argv, stdout=out, stderr=subprocess.STDOUT, env=self.env)
        return self

    def stop(self, timeout: float = 5.0) -> int | None:
        if self.proc is None:
            return None
        return terminate(self.proc, timeout)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def text(self) -> str:
        return self.log.read_text(errors="replace")
