"""Upstream's resource budget for a process: cgroup v1 cpu and memory groups (root only).

The upstream charts limit the Azure provider to cpu 50m / memory 100Mi: 50m is a CFS quota of
5 ms per 100 ms period. A program is put in the groups by a tiny `sh` wrapper that writes its
own PID to both `cgroup.procs` and then execs it, so that its imports are charged too.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

CGROUP = Path("/sys/fs/cgroup")


@dataclass(frozen=True)
class Usage:
    """What the groups saw: peak memory, OOM kills, CPU used and periods throttled."""

    peak_mib: float
    oom_kills: int
    cpu_seconds: float
    throttled_periods: int

    def since(self, earlier: Usage) -> Usage:
        """CPU and throttling since `earlier`; peak memory and OOM kills over the whole life."""
        return Usage(
            self.peak_mib,
            self.oom_kills,
            self.cpu_seconds - earlier.cpu_seconds,
            self.throttled_periods - earlier.throttled_periods,
        )


@dataclass(frozen=True)
class Budget:
    name: str
    prefix: list[str]  # the argv prefix that puts a program in the groups before exec

    def usage(self) -> Usage:
        memory, cpu = CGROUP / "memory" / self.name, CGROUP / "cpu" / self.name
        peak = int((memory / "memory.max_usage_in_bytes").read_text())
        oom = _field(memory / "memory.oom_control", "oom_kill")
        throttled = _field(cpu / "cpu.stat", "nr_throttled")
        acct = CGROUP / "cpuacct" / self.name / "cpuacct.usage"
        used = int(acct.read_text()) / 1e9 if acct.exists() else 0.0
        return Usage(peak / 2**20, oom, used, throttled)


def _field(path: Path, name: str) -> int:
    for line in path.read_text().splitlines():
        key, _, value = line.partition(" ")
        if key == name:
            return int(value)
    return 0


def available() -> bool:
    return (CGROUP / "cpu" / "cgroup.procs").exists() and (
        CGROUP / "memory" / "cgroup.procs"
    ).exists()


@contextmanager
def budget(name: str, cpu_millis: int, memory_mib: int) -> Iterator[Budget]:
    """cpu(acct) and memory groups named `name`; removed (once empty) on the way out."""
    cpu, memory = CGROUP / "cpu" / name, CGROUP / "memory" / name
    groups = [cpu, memory]
    # cpu and cpuacct are usually co-mounted (one directory); where they are not, add cpuacct
    acct = CGROUP / "cpuacct" / name
    if (CGROUP / "cpuacct").resolve() != (CGROUP / "cpu").resolve():
        groups.append(acct)
    for group in groups:
        if group.exists():
            group.rmdir()
        group.mkdir()
    try:
        (cpu / "cpu.cfs_period_us").write_text("100000")
        (cpu / "cpu.cfs_quota_us").write_text(str(cpu_millis * 100))
        (memory / "memory.limit_in_bytes").write_text(str(memory_mib * 1024 * 1024))
        enter = " && ".join(f"echo $$ > {g}/cgroup.procs" for g in groups)
        yield Budget(name, ["sh", "-c", f'{enter} && exec "$@"', "sh"])
    finally:
        for group in groups:
            for _ in range(50):
                try:
                    group.rmdir()
                    break
                except OSError:
                    time.sleep(0.1)
