"""A node's temp dir under /tmp: made with the owner's pid, everything mounted below it
undone, and reaped by the next run when its owner died without a teardown (pytest killed)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path


def run(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, check=check, capture_output=True, text=True)


def unmount_under(directory: Path) -> None:
    """Unmount everything below a directory, deepest first (pod volumes, sandbox shm, ...)."""
    prefix = str(directory) + "/"
    points = [
        line.split()[4]
        for line in Path("/proc/self/mountinfo").read_text().splitlines()
        if line.split()[4].startswith(prefix)
    ]
    for p in sorted(points, key=len, reverse=True):
        run("umount", "-l", p, check=False)


def run_dir(prefix: str = "e2e-") -> Path:
    """A temp dir for one node: short (unix socket paths < 108 bytes), named so reap_stale
    finds it, owned by this process (owner.pid) until it exits."""
    tmp = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    (tmp / "owner.pid").write_text(str(os.getpid()))
    return tmp


def rmdir_tree(top: Path) -> None:
    """Removes the empty directories (cgroups) below and at `top`, deepest first."""
    if not top.is_dir():
        return
    dirs = sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts))
    for d in [*dirs, top]:
        with contextlib.suppress(OSError):
            d.rmdir()


def _pids_in_cgroup(root: Path) -> list[int]:
    pids: list[int] = []
    for procs in root.rglob("cgroup.procs"):
        with contextlib.suppress(OSError, ValueError):
            pids += [int(x) for x in procs.read_text().split()]
    return pids


def _owner_gone(d: Path) -> bool:
    """The pytest (or demo) that wrote d/owner.pid is gone."""
    try:
        pid = int((d / "owner.pid").read_text())
    except (OSError, ValueError):
        return False  # being set up, or not ours
    return not Path(f"/proc/{pid}").exists()


def _kill_cmdlines_with(marker: bytes) -> None:
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            with contextlib.suppress(OSError):
                if marker in (proc / "cmdline").read_bytes():
                    os.kill(int(proc.name), signal.SIGKILL)


def _reap(d: Path) -> None:
    _kill_cmdlines_with(str(d).encode())
    cgroups = [c / f"e2e-{d.name}" for c in Path("/sys/fs/cgroup").iterdir()]
    for c in cgroups:
        for p in _pids_in_cgroup(c):
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, signal.SIGKILL)
    time.sleep(0.2)
    for c in cgroups:
        rmdir_tree(c)
    shutil.rmtree(d, ignore_errors=True)


def reap_stale(base: Path = Path("/tmp")) -> list[Path]:
    """Clean up after runs that died without a teardown (pytest killed): their control plane,
    plugins, shims and containers (found by their temp dir and cgroup root), cgroups and temp
    dir. A run is stale when the pytest that wrote its owner.pid is gone."""
    reaped: list[Path] = []
    for d in base.glob("e2e-*"):
        if _owner_gone(d):
            _reap(d)
            reaped.append(d)
    return reaped
