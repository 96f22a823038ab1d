"""Time from exec to a served socket, to a Version answer and to the first successful Mount, for
our provider and the upstream Go provider v1.8.2, each under upstream's chart limits for the
provider (cpu 50m, memory 100Mi) in cgroup v1 groups of their own; and the time our driver
takes to serve its CSI socket under the driver's limits (cpu 200m, memory 200Mi). Root only.

    tests/netns-run .venv/bin/python -m bench.startup [--rounds 5] [--cpu-millis 50]
        [--driver-cpu-millis 200] [--write docs/benchmarks.md]

The rounds interleave the providers (ours as its image runs it, ours trusting the CA bundle
file as it did before, the Go provider); medians are reported (a CFS quota makes latency jitter
with its 100 ms period), with the CPU seconds the group used up to the first Mount. Our
processes run as in their images: our packages byte-compiled (pip compiles them at install;
PYTHONDONTWRITEBYTECODE, set on some machines, would otherwise make every start compile them),
the provider with the image's CA trust (testbed/trust.py).
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
from bench.budget import Budget, budget
from bench.report import write_section
from keyvault_emulator.tls import ensure_pki
from secrets_store_api import csi_pb2, csi_pb2_grpc, provider_pb2
from testbed import REPO
from testbed.controlplane import write_kubeconfig
from testbed.driver import DriverProcess
from testbed.emulator import Emulator
from testbed.peers import peer_path
from testbed.process import terminate
from testbed.provider import ProviderProcess, ours, upstream
from testbed.trust import image_trust_env

# (socket served, Version answered, first Mount done, CPU seconds at the first Mount)
Start = tuple[float, float, float, float]


def wait_for(check: Callable[[], bool], deadline: float) -> float:
    while time.monotonic() < deadline:
        if check():
            return time.monotonic()
        time.sleep(0.01)
    raise TimeoutError


def compile_packages() -> None:
    """Our packages' bytecode, as the images hold it (timestamp-checked: the tree is edited)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    packages = ("provider_azure", "csi_driver", "secrets_store_api")
    cmd = [sys.executable, "-m", "compileall", "-q", *packages]
    subprocess.run(cmd, cwd=REPO, env=env, check=True, stdout=subprocess.DEVNULL)


def one_start(proc: ProviderProcess, groups: Budget) -> Start:
    """Seconds from exec to the socket, to a Version answer, to the first Mount that succeeds;
    and the group's CPU seconds by then."""
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
    cpu = groups.usage().cpu_seconds
    return socket_at - start, version_at - start, mount_at - start, cpu


# Our provider as its image runs it, the same with the CA bundle file (how it trusted before
# the image's trust settings), and the upstream Go provider.
PROVIDERS = ("ours", "ours, CA bundle file", "Go")


def run(rounds: int, cpu_millis: int, memory_mib: int) -> dict[str, list[Start]]:
    go_binary = peer_path("azure-provider")
    state = Path(tempfile.mkdtemp(prefix="bench-startup-"))
    trust(state)
    emu = Emulator.start(state, seeds=[Path("tests/emulator/seed.yaml")])
    image_trust = image_trust_env(emu.ca_path, state / "certs")
    results: dict[str, list[Start]] = {name: [] for name in PROVIDERS}
    try:
        seed(emu)
        for _ in range(rounds):
            for i, name in enumerate(PROVIDERS):
                with budget(f"bench-startup-{i}", cpu_millis, memory_mib) as groups:
                    sock = str(state / f"p{i}.sock")
                    proc = upstream(go_binary, sock) if name == "Go" else ours(sock)
                    if name == "ours":
                        proc.env.update(image_trust)
                    proc.argv = [*groups.prefix, *proc.argv]
                    try:
                        results[name].append(one_start(proc, groups))
                    finally:
                        proc.stop()
                print(name, results[name][-1], flush=True)
    finally:
        emu.stop()
        shutil.rmtree(state, ignore_errors=True)
    return results


def provider_table(results: dict[str, list[Start]], cpu_millis: int, memory_mib: int) -> str:
    def row(name: str) -> str:
        med = [statistics.median(c) for c in zip(*results[name], strict=True)]
        return f"| {name} | {med[0]:.2f} | {med[1]:.2f} | {med[2]:.2f} | {med[3]:.3f} |"

    rounds = len(results["Go"])
    return "\n".join(
        [
            f"Provider start under cpu {cpu_millis}m / memory {memory_mib}Mi (cgroup v1), median "
            f"of {rounds} interleaved starts, seconds from exec; "
            f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} CPUs.",
            "",
            "| provider | socket served | Version answered | first Mount (1 secret) done "
            "| CPU s to the first Mount |",
            "|---|---|---|---|---|",
            *(row(name) for name in PROVIDERS),
        ]
    )


def driver_starts(rounds: int, cpu_millis: int, memory_mib: int) -> str:
    """Our driver from exec to a served CSI socket and a GetPluginInfo answer, with a
    kubeconfig (its API client is built before the socket; the server need not answer)."""
    state = Path(tempfile.mkdtemp(prefix="bench-driver-start-"))
    samples: list[tuple[float, float, float]] = []
    try:
        providers = (state / "providers", state / "providers-extra")
        for d in providers:
            d.mkdir()
        for _ in range(rounds):
            samples.append(_driver_start(state, providers, cpu_millis, memory_mib))
            print("driver", samples[-1], flush=True)
    finally:
        shutil.rmtree(state, ignore_errors=True)
    med = [statistics.median(c) for c in zip(*samples, strict=True)]
    return "\n".join(
        [
            f"Driver start under cpu {cpu_millis}m / memory {memory_mib}Mi (cgroup v1), median "
            f"of {rounds} starts, seconds from exec.",
            "",
            "| driver | CSI socket served | GetPluginInfo answered | CPU s by then |",
            "|---|---|---|---|",
            f"| ours | {med[0]:.2f} | {med[1]:.2f} | {med[2]:.3f} |",
        ]
    )


def _driver_start(
    state: Path, providers: tuple[Path, Path], cpu_millis: int, memory_mib: int
) -> tuple[float, float, float]:
    # A cluster CA of one certificate, as in-cluster configuration has.
    ca = ensure_pki(state / "pki").ca_path
    kubeconfig = write_kubeconfig(state / "kubeconfig", "https://127.0.0.1:1", ca, "t")
    driver = DriverProcess(state, kubeconfig=kubeconfig, provider_dirs=providers)
    driver.socket.unlink(missing_ok=True)
    with budget("bench-startup-driver", cpu_millis, memory_mib) as groups:
        env = {**os.environ, "KUBECONFIG": str(state / "no-such-kubeconfig")}
        with open(driver.log, "ab") as log:
            start = time.monotonic()
            proc = subprocess.Popen(
                [*groups.prefix, *driver.argv()], stdout=log, stderr=log, cwd=REPO, env=env
            )
        try:
            served = wait_for(driver.socket.exists, start + 60)
            with grpc.insecure_channel(f"unix://{driver.socket}") as channel:
                identity = csi_pb2_grpc.IdentityStub(channel)
                identity.GetPluginInfo(
                    csi_pb2.GetPluginInfoRequest(), timeout=60, wait_for_ready=True
                )
            answered = time.monotonic()
            cpu = groups.usage().cpu_seconds
        finally:
            terminate(proc, 30)
    return served - start, answered - start, cpu


def main() -> None:
    if os.geteuid() != 0:
        sys.exit("bench.startup makes cgroups: run it as root")
    parser = argparse.ArgumentParser(prog="python -m bench.startup")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--cpu-millis", type=int, default=50)
    parser.add_argument("--memory-mib", type=int, default=100)
    parser.add_argument("--driver-cpu-millis", type=int, default=200)
    parser.add_argument("--driver-memory-mib", type=int, default=200)
    parser.add_argument("--write", help="replace this file's `startup` results section")
    args = parser.parse_args()
    compile_packages()
    providers = run(args.rounds, args.cpu_millis, args.memory_mib)
    driver = driver_starts(args.rounds, args.driver_cpu_millis, args.driver_memory_mib)
    result = provider_table(providers, args.cpu_millis, args.memory_mib) + "\n\n" + driver
    print(result)
    if args.write:
        write_section(Path(args.write), "startup", result)


if __name__ == "__main__":
    main()
