"""Time from exec to a served socket, to a Version answer and to the first successful Mount, for
our provider and the upstream Go provider v1.8.2, each under upstream's chart limits for the
provider (cpu 50m, memory 100Mi) in cgroup v1 groups of their own. Root only.

    tests/netns-run .venv/bin/python -m bench.startup [--rounds 5] [--cpu-millis 50]
        [--write docs/benchmarks.md]

The rounds interleave the two providers; medians are reported (a CFS quota makes latency jitter
with its 100 ms period).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import grpc

from bench.__main__ import SECRETS, request, seed, trust
from bench.budget import budget
from bench.report import write_section
from secrets_store_api import provider_pb2
from testbed.emulator import Emulator
from testbed.peers import peer_path
from testbed.provider import ProviderProcess, ours, upstream


def wait_for(check: Callable[[], bool], deadline: float) -> float:
    while time.monotonic() < deadline:
        if check():
            return time.monotonic()
        time.sleep(0.01)
    raise TimeoutError


def one_start(proc: ProviderProcess) -> tuple[float, float, float]:
    """Seconds from exec to the socket, to a Version answer, to the first Mount that succeeds."""
    if os.path.exists(proc.socket):
        os.remove(proc.socket)
    start = time.monotonic()
    proc.proc = subprocess.Popen(
        proc.argv,
        env={**os.environ, **proc.env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=Path(__file__).resolve().parents[1],
    )
    deadline = start + 120
    socket_at = wait_for(lambda: os.path.exists(proc.socket), deadline)
    channel = grpc.insecure_channel(f"unix://{proc.socket}")
    proc.channel = channel
    stub = proc.stub
    while True:
        try:
            stub.Version(provider_pb2.VersionRequest(version="v1alpha1"), timeout=60)
            break
        except grpc.RpcError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    version_at = time.monotonic()
    response = proc.mount(request(1), SECRETS, timeout=110)
    assert response.files
    mount_at = time.monotonic()
    return socket_at - start, version_at - start, mount_at - start


def run(rounds: int, cpu_millis: int, memory_mib: int) -> str:
    go_binary = peer_path("azure-provider")
    state = Path(tempfile.mkdtemp(prefix="bench-startup-"))
    trust(state)
    emu = Emulator.start(state, seeds=[Path("tests/emulator/seed.yaml")])
    results: dict[str, list[tuple[float, float, float]]] = {"ours": [], "Go": []}
    try:
        seed(emu)
        for _ in range(rounds):
            for name in ("ours", "Go"):
                with budget(f"bench-startup-{name}", cpu_millis, memory_mib) as groups:
                    sock = str(state / f"{name}.sock")
                    proc = ours(sock) if name == "ours" else upstream(go_binary, sock)
                    proc.argv = [*groups.prefix, *proc.argv]
                    try:
                        results[name].append(one_start(proc))
                    finally:
                        proc.stop()
                print(name, results[name][-1], flush=True)
    finally:
        emu.stop()
        shutil.rmtree(state, ignore_errors=True)

    def row(name: str) -> str:
        cols = zip(*results[name], strict=True)
        med = [statistics.median(c) for c in cols]
        return f"| {name} | {med[0]:.2f} | {med[1]:.2f} | {med[2]:.2f} |"

    return "\n".join(
        [
            f"Provider start under cpu {cpu_millis}m / memory {memory_mib}Mi (cgroup v1), median "
            f"of {rounds} interleaved starts, seconds from exec; "
            f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} CPUs.",
            "",
            "| provider | socket served | Version answered | first Mount (1 secret) done |",
            "|---|---|---|---|",
            row("ours"),
            row("Go"),
        ]
    )


def main() -> None:
    if os.geteuid() != 0:
        sys.exit("bench.startup makes cgroups: run it as root")
    parser = argparse.ArgumentParser(prog="python -m bench.startup")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--cpu-millis", type=int, default=50)
    parser.add_argument("--memory-mib", type=int, default=100)
    parser.add_argument("--write", help="replace this file's `startup` results section")
    args = parser.parse_args()
    result = run(args.rounds, args.cpu_millis, args.memory_mib)
    print(result)
    if args.write:
        write_section(Path(args.write), "startup", result)


if __name__ == "__main__":
    main()
