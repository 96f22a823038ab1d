"""Bounded by construction, measured: RSS over many distinct mounts, /healthz under the heaviest
request, and `objectVersionHistory: 1000000000` beside the upstream Go provider.

    tests/netns-run .venv/bin/python -m bench.bounded [--mounts 10000] [--write docs/benchmarks.md]

RSS: one Mount after another, each with its own vault name, its own service principal (client
secret) and its own `objects` text, so every cache (credentials, vault clients, rate limiters,
parsed objects, metric series) sees only new keys; the vault names resolve to the emulator, which
refuses the unknown identities, so each Mount costs a credential, a client and a refusal.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import grpc

from bench.__main__ import SECRETS, VAULT, trust
from bench.__main__ import seed as seed_bench
from bench.report import write_section
from testbed.emulator import TENANT_ID, Emulator
from testbed.mount_attributes import attributes, objects_yaml
from testbed.peers import peer_path
from testbed.provider import ProviderProcess, ours, upstream

SP_ID = SECRETS["clientid"]
HEALTHZ = 18989


def seed(emu: Emulator) -> None:
    """`make bench`'s identity and vault, and a secret with five versions."""
    seed_bench(emu)
    for i in range(5):
        emu.set_secret(VAULT, "hist", f"hist-{i}")


def status_kib(proc: ProviderProcess, field: str) -> int:
    assert proc.proc is not None
    for line in Path(f"/proc/{proc.proc.pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def history_row(name: str, proc: ProviderProcess) -> str:
    objects = objects_yaml(
        {"objectName": "hist", "objectType": "secret", "objectVersionHistory": 1_000_000_000}
    )
    attrib = attributes(vault=VAULT, tenant=TENANT_ID, objects=objects)
    proc.mount(attrib, SECRETS)  # warm: token, connection
    start = time.perf_counter()
    response = proc.mount(attrib, SECRETS)
    ms = (time.perf_counter() - start) * 1000
    return (
        f"| {name} | {len(response.files)} files | {ms:.1f} ms "
        f"| {status_kib(proc, 'VmHWM') / 1024:.1f} MiB |"
    )


def resolve_many(names: list[str], state: Path) -> None:
    """Point `<name>.vault.azure.net` at loopback (we are inside tests/netns-run's namespace)."""
    hosts = state / "hosts"
    base = Path("/etc/hosts").read_text()
    hosts.write_text(base + "".join(f"127.0.0.1 {n}.vault.azure.net\n" for n in names))
    hosts.chmod(0o644)
    subprocess.run(["mount", "--bind", str(hosts), "/etc/hosts"], check=True)


def rss_rows(proc: ProviderProcess, mounts: int) -> list[str]:
    rows = []
    start_rss = status_kib(proc, "VmRSS")
    t0 = time.perf_counter()
    for i in range(mounts):
        obj = {"objectName": "s", "objectType": "secret", "objectAlias": f"a/{i}"}
        attrib = attributes(vault=f"kv-r{i:05d}", tenant=TENANT_ID, objects=objects_yaml(obj))
        try:
            proc.mount(attrib, {"clientid": SP_ID, "clientsecret": f"wrong-{i}"}, timeout=30)
            raise AssertionError("an unknown identity mounted")
        except grpc.RpcError:
            pass
        if (i + 1) % (mounts // 10) == 0:
            rss = status_kib(proc, "VmRSS")
            rows.append(f"| {i + 1} | {rss / 1024:.1f} | {time.perf_counter() - t0:.0f} s |")
            print(rows[-1], flush=True)
    rows.insert(0, f"| 0 | {start_rss / 1024:.1f} | 0 s |")
    return rows


def healthz_ms() -> float:
    start = time.perf_counter()
    with urllib.request.urlopen(f"http://127.0.0.1:{HEALTHZ}/healthz", timeout=10) as answer:
        assert answer.status == 200
    return (time.perf_counter() - start) * 1000


def heaviest_request(i: int) -> dict[str, str]:
    """1,000 objects with 60-deep aliases, a distinct text each time (no parse cache hit); the
    vault name, checked after the objects (upstream's order), is refused: all parse, no fetch."""
    deep = "/".join(f"d{j}" for j in range(60))
    objs = [
        {"objectName": f"o{j}", "objectType": "secret", "objectAlias": f"{deep}/f{j}-{i}"}
        for j in range(1000)
    ]
    return attributes(vault="k", tenant=TENANT_ID, objects=objects_yaml(*objs))


def healthz_rows(proc: ProviderProcess, samples: int) -> list[str]:
    idle = sorted(healthz_ms() for _ in range(samples))
    stop = threading.Event()
    busy = {"mounts": 0}

    def hammer() -> None:
        i = 0
        while not stop.is_set():
            i += 1
            with contextlib.suppress(grpc.RpcError):
                proc.mount(heaviest_request(i), SECRETS, timeout=60)
            busy["mounts"] += 1

    worker = threading.Thread(target=hammer)
    worker.start()
    time.sleep(0.5)
    loaded = []
    for _ in range(samples):
        loaded.append(healthz_ms())
        time.sleep(0.02)
    stop.set()
    worker.join()
    loaded.sort()

    def row(name: str, xs: list[float]) -> str:
        return f"| {name} | {xs[len(xs) // 2]:.1f} | {xs[int(len(xs) * 0.99)]:.1f} | {xs[-1]:.1f} |"

    return [row("idle", idle), row(f"{busy['mounts']} heaviest Mounts in flight", loaded)]


def run(mounts: int, samples: int) -> str:
    go_binary = peer_path("azure-provider")
    state = Path(tempfile.mkdtemp(prefix="bench-bounded-"))
    trust(state)
    resolve_many([f"kv-r{i:05d}" for i in range(mounts)], state)
    emu = Emulator.start(state, seeds=[Path("tests/emulator/seed.yaml")])
    try:
        seed(emu)
        mine = ours(str(state / "ours.sock"), healthz_port=HEALTHZ, prometheus_port=18898)
        with mine:
            history = [history_row("ours", mine)]
            health = healthz_rows(mine, samples)
            rss = rss_rows(mine, mounts)
        if go_binary.is_file():
            with upstream(go_binary, str(state / "go.sock")) as theirs:
                history.append(history_row("upstream Go v1.8.2", theirs))
    finally:
        emu.stop()
        shutil.rmtree(state, ignore_errors=True)
    return "\n".join(
        [
            f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on "
            f"{platform.machine()} ({os.cpu_count()} CPUs), Python {platform.python_version()}.",
            "",
            "`objectVersionHistory: 1000000000` on a secret with five versions:",
            "",
            "| provider | answer | time | peak RSS of the process |",
            "|---|---|---|---|",
            *history,
            "",
            f"Our RSS over {mounts} Mounts, each with a new vault name, identity and objects text:",
            "",
            "| mounts | RSS MiB | elapsed |",
            "|---|---|---|",
            *rss,
            "",
            f"/healthz latency, {samples} probes each (ms):",
            "",
            "| provider state | p50 | p99 | max |",
            "|---|---|---|---|",
            *health,
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.bounded")
    parser.add_argument("--mounts", type=int, default=10_000)
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--write", help="replace this file's `bounded` results section")
    args = parser.parse_args()
    result = run(args.mounts, args.samples)
    print(result)
    if args.write:
        write_section(Path(args.write), "bounded", result)


if __name__ == "__main__":
    main()
