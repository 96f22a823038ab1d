"""Waiting for a child's unix socket, and stopping a child: SIGTERM, then SIGKILL."""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from pathlib import Path


def tail(log: Path | None, chars: int = 2000) -> str:
    if log is None:
        return ""
    try:
        return log.read_text(errors="replace")[-chars:]
    except OSError:
        return ""


def wait_socket(
    path: Path, proc: subprocess.Popen[bytes], log: Path | None, timeout: float = 15
) -> None:
    """Until `path` accepts a connection (a stale socket of an earlier process does not)."""
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
            raise RuntimeError(f"process exited ({proc.returncode}): {tail(log)}")
        time.sleep(0.02)
    raise TimeoutError(f"{path} did not appear: {tail(log)}")


def terminate(proc: subprocess.Popen[bytes], timeout: float) -> int:
    """SIGTERM and wait; SIGKILL when it outlives `timeout`. Returns the exit status."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode
