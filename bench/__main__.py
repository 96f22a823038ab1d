"""Mount latency, ours vs the upstream Go provider v1.8.2, interleaved on one emulator.

    tests/netns-run .venv/bin/python -m bench [--rounds N] [--write docs/benchmarks.md]
        [--plots docs] [--no-budget]

For 1, 10 and 50 secrets per mount, with the emulator adding 20 ms to every answer (an
in-region Key Vault round trip) and with no added latency (CPU cost): p50/p99 of Mount for
each provider (one Mount of ours, then one of theirs, alternating), the ratios, and RSS over
1,000 mounts, ours beside Go's. Service-principal identity, as the upstream quick-start uses.

Budget mode (root, cgroup v1; on unless --no-budget): both providers again, each in cpu and
memory groups at upstream's chart limits for the provider (cpu 50m, memory 100Mi), and a
node-restart mount storm sent to each in turn (bench/storm.py): wall time and failures.

--plots DIR writes SVG plots (needs the `bench` extra: matplotlib).
"""

from __future__ import annotations

import argparse
import functools
import os
import platform
import shutil
import ssl
import statistics
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from bench.budget import Usage, budget
from bench.budget import available as budget_available
from bench.storm import StormResult, storm
from keyvault_emulator.tls import ensure_pki
from testbed.emulator import TENANT_ID, Emulator
from testbed.mount_attributes import attributes, objects_yaml
from testbed.peers import peer_path
from testbed.provider import ProviderProcess, ours, upstream

VAULT = "kv-bench"
SP_ID, SP_SECRET = "0d000001-0000-4000-8000-0000000000b1", "bench-secret"
SIZES = (1, 10, 50)
SECRETS = {"clientid": SP_ID, "clientsecret": SP_SECRET}


def trust(state: Path) -> None:
    pki = ensure_pki(state)
    bundle = state / "trust.pem"
    system = ssl.get_default_verify_paths().cafile or ssl.get_default_verify_paths().openssl_cafile
    parts = [pki.ca_path.read_text()]
    if system and Path(system).is_file():
        parts.append(Path(system).read_text())
    bundle.write_text("\n".join(parts))
    os.environ["SSL_CERT_FILE"] = str(bundle)
    os.environ["REQUESTS_CA_BUNDLE"] = str(bundle)


def seed(emu: Emulator) -> None:
    emu.seed(
        {
            "identities": [
                {
                    "name": "bench-sp",
                    "type": "servicePrincipal",
                    "clientId": SP_ID,
                    "clientSecret": SP_SECRET,
                }
            ],
            "vaults": [
                {
                    "name": VAULT,
                    "tenant": TENANT_ID,
                    "roleAssignments": [{"identity": "bench-sp", "role": "Key Vault Secrets User"}],
                    "secrets": [
                        {"name": f"bench-{i:02d}", "value": f"value-{i:02d}-" + "x" * 40}
                        for i in range(max(SIZES))
                    ],
                }
            ],
        }
    )


def request(n: int) -> dict[str, str]:
    objs = [{"objectName": f"bench-{i:02d}", "objectType": "secret"} for i in range(n)]
    return attributes(vault=VAULT, tenant=TENANT_ID, objects=objects_yaml(*objs))


def timed(proc: ProviderProcess, attrib: dict[str, str]) -> float:
    start = time.perf_counter()
    response = proc.mount(attrib, SECRETS)
    elapsed = time.perf_counter() - start
    assert response.files, "empty mount"
    return elapsed * 1000


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


@dataclass(frozen=True)
class CpuRow:
    """CPU seconds each provider process used over one row's interleaved Mounts."""

    latency: int
    objects: int
    mounts: int
    ours_seconds: float
    go_seconds: float

    def line(self) -> str:
        ours_ms, go_ms = (
            self.ours_seconds * 1000 / self.mounts,
            self.go_seconds * 1000 / self.mounts,
        )
        ratio = f"{ours_ms / go_ms:.2f}x" if go_ms else "n/a"
        return (
            f"| {self.latency} ms | {self.objects} | {self.mounts} | {ours_ms:.2f} | {go_ms:.2f} "
            f"| {ours_ms / self.objects:.3f} | {go_ms / self.objects:.3f} | {ratio} |"
        )


@dataclass
class Figures:
    """Everything one run measured: the tables, and the series the plots draw."""

    rows: list[str] = field(default_factory=list)
    latency: list[tuple[int, int, float, float, float, float]] = field(default_factory=list)
    rss: dict[str, list[tuple[int, float]]] = field(default_factory=dict)
    storms: dict[str, list[StormResult]] = field(default_factory=dict)
    usage: dict[str, Usage] = field(default_factory=dict)
    cpu: list[CpuRow] = field(default_factory=list)


def latency_rows(
    mine: ProviderProcess, theirs: ProviderProcess, emu: Emulator, rounds: int, latency: int
) -> Figures:
    figures = Figures()
    emu.set_latency(latency)
    for n in SIZES:
        attrib = request(n)
        for _ in range(2):  # warm-up: connections, and our token cache
            timed(mine, attrib)
            timed(theirs, attrib)
        a: list[float] = []
        b: list[float] = []
        cpu_mine, cpu_theirs = mine.cpu_seconds(), theirs.cpu_seconds()
        for _ in range(rounds):
            a.append(timed(mine, attrib))
            b.append(timed(theirs, attrib))
        cpu_mine, cpu_theirs = mine.cpu_seconds() - cpu_mine, theirs.cpu_seconds() - cpu_theirs
        figures.cpu.append(CpuRow(latency, n, rounds, cpu_mine, cpu_theirs))
        a50, a99, b50, b99 = pct(a, 0.5), pct(a, 0.99), pct(b, 0.5), pct(b, 0.99)
        figures.latency.append((latency, n, a50, a99, b50, b99))
        figures.rows.append(
            f"| {latency} ms | {n} | {a50:.1f} | {a99:.1f} | {b50:.1f} | {b99:.1f} "
            f"| {a50 / b50:.2f}x | {a99 / b99:.2f}x |"
        )
        print(figures.rows[-1], flush=True)
        print(figures.cpu[-1].line(), flush=True)
    return figures


def rss_series(proc: ProviderProcess, mounts: int, samples: int = 20) -> list[tuple[int, float]]:
    """RSS (MiB) every mounts/samples Mounts of 10 objects."""
    attrib = request(10)
    step = max(1, mounts // samples)
    series = [(0, proc.rss_kib() / 1024)]
    for i in range(1, mounts + 1):
        proc.mount(attrib, SECRETS)
        if i % step == 0 or i == mounts:
            series.append((i, proc.rss_kib() / 1024))
    return series


def unconstrained(
    emu: Emulator,
    state: Path,
    go_binary: Path,
    rounds: int,
    rss_mounts: int,
    latencies: tuple[int, ...],
) -> Figures:
    figures = Figures()
    mine = ours(str(state / "ours.sock"), healthz_port=18989, prometheus_port=18898)
    mine.start()
    theirs = upstream(go_binary, str(state / "go.sock"))
    theirs.start()
    try:
        for latency in latencies:
            part = latency_rows(mine, theirs, emu, rounds, latency)
            figures.rows += part.rows
            figures.latency += part.latency
            figures.cpu += part.cpu
        emu.set_latency(0)
        figures.rss = {"ours": rss_series(mine, rss_mounts), "Go": rss_series(theirs, rss_mounts)}
    finally:
        mine.stop()
        theirs.stop()
    return figures


@dataclass(frozen=True)
class StormPlan:
    pods: int = 250
    objects: int = 10
    inflight: int = 25
    latency: int = 20
    rounds: int = 2
    cpu_millis: int = 50
    memory_mib: int = 100


def budgeted(emu: Emulator, state: Path, go_binary: Path, plan: StormPlan) -> Figures:
    """Both providers under the budget; storms interleaved: ours, Go, ours, Go, ..."""
    figures = Figures(storms={"ours": [], "Go": []})
    tag = os.getpid()
    limits = (plan.cpu_millis, plan.memory_mib)
    with budget(f"bench-ours-{tag}", *limits) as b_ours, budget(f"bench-go-{tag}", *limits) as b_go:
        procs = {
            "ours": ours(str(state / "ours-b.sock")),
            "Go": upstream(go_binary, str(state / "go-b.sock")),
        }
        groups = {"ours": b_ours, "Go": b_go}
        try:
            for name, proc in procs.items():
                proc.argv = [*groups[name].prefix, *proc.argv]
                proc.start(wait=120)
                proc.mount(
                    storm_attributes(plan.objects, "warm-up", str(uuid.uuid4())),
                    SECRETS,
                    timeout=120,
                )
            emu.set_latency(plan.latency)
            before = {name: groups[name].usage() for name in procs}
            for _ in range(plan.rounds):
                for name, proc in procs.items():
                    result = storm(
                        proc,
                        functools.partial(storm_attributes, plan.objects),
                        SECRETS,
                        pods=plan.pods,
                        inflight=plan.inflight,
                    )
                    figures.storms[name].append(result)
                    print(
                        f"storm {name}: {result.wall_seconds:.1f} s, {result.failures} failed",
                        flush=True,
                    )
            figures.usage = {name: groups[name].usage().since(before[name]) for name in procs}
        finally:
            emu.set_latency(0)
            for proc in procs.values():
                proc.stop()
    return figures


def storm_attributes(n: int, pod: str, uid: str) -> dict[str, str]:
    """One pod of the storm: the shared SPC's attributes with this pod's name and uid."""
    attrib = request(n)
    attrib["csi.storage.k8s.io/pod.name"] = pod
    attrib["csi.storage.k8s.io/pod.uid"] = uid
    return attrib


def storm_table(figures: Figures, plan: StormPlan) -> list[str]:
    lines = [
        f"Mount storm under cpu {plan.cpu_millis}m / memory {plan.memory_mib}Mi per provider "
        f"(cgroup v1): {plan.pods} pods x {plan.objects} secrets, one SPC and identity, "
        f"{plan.inflight} Mounts in flight, emulator latency {plan.latency} ms, Mount calls "
        "straight to each provider (no driver); storms interleaved, ours first.",
        "",
        "| provider | wall s (each storm) | median wall s | failures | peak memory MiB "
        "| OOM kills | CPU s in the storms | throttled periods |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name in ("ours", "Go"):
        results, use = figures.storms[name], figures.usage[name]
        walls = ", ".join(f"{r.wall_seconds:.1f}" for r in results)
        median = statistics.median(r.wall_seconds for r in results)
        failures = sum(r.failures for r in results)
        lines.append(
            f"| {name} | {walls} | {median:.1f} | {failures} | {use.peak_mib:.1f} "
            f"| {use.oom_kills} | {use.cpu_seconds:.1f} | {use.throttled_periods} |"
        )
    ratio = statistics.median(r.wall_seconds for r in figures.storms["ours"]) / statistics.median(
        r.wall_seconds for r in figures.storms["Go"]
    )
    errors = [r.first_error for rs in figures.storms.values() for r in rs if r.first_error]
    lines += ["", f"Storm wall time, ours / Go (medians): {ratio:.2f}x."]
    if errors:
        lines.append(f"First failure: `{errors[0]}`")
    return lines


def run(
    rounds: int,
    rss_mounts: int,
    latencies: tuple[int, ...] = (20, 0),
    plan: StormPlan | None = None,
    plots: Path | None = None,
) -> str:
    go_binary = peer_path("azure-provider")
    if not go_binary.is_file():
        sys.exit(f"upstream provider missing at {go_binary}: run `make peers`")
    state = Path(tempfile.mkdtemp(prefix="bench-"))
    trust(state)
    emu = Emulator.start(state, seeds=[Path("tests/emulator/seed.yaml")])
    try:
        seed(emu)
        figures = unconstrained(emu, state, go_binary, rounds, rss_mounts, latencies)
        if plan is not None:
            stormed = budgeted(emu, state, go_binary, plan)
            figures.storms, figures.usage = stormed.storms, stormed.usage
    finally:
        emu.stop()
        shutil.rmtree(state, ignore_errors=True)
    return report(figures, rounds, rss_mounts, plan, plots)


def cpu_table(rows: list[CpuRow]) -> list[str]:
    return [
        "CPU of each provider process over the same interleaved Mounts (user + system seconds of "
        "all its threads from /proc/<pid>/stat, read before and after each row: the gRPC "
        "server included, the bench's client and the emulator not; 10 ms ticks, so a row's "
        "total is ±10 ms):",
        "",
        "| emulator latency | objects | Mounts | ours CPU ms per Mount | Go CPU ms per Mount "
        "| ours CPU ms per GET | Go CPU ms per GET | CPU ratio |",
        "|---|---|---|---|---|---|---|---|",
        *(row.line() for row in rows),
    ]


def report(
    figures: Figures, rounds: int, rss_mounts: int, plan: StormPlan | None, plots: Path | None
) -> str:
    ours_rss, go_rss = figures.rss["ours"], figures.rss["Go"]
    lines = [
        f"Measured {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {platform.machine()} "
        f"({os.cpu_count()} CPUs), Python {platform.python_version()}, {rounds} interleaved "
        "rounds per row, service principal, secrets of ~50 bytes; load average at the end "
        f"{os.getloadavg()[0]:.1f} (other work on the machine skews the no-latency rows).",
        "",
        "| emulator latency | objects | ours p50 ms | ours p99 ms | Go p50 ms | Go p99 ms "
        "| p50 ratio | p99 ratio |",
        "|---|---|---|---|---|---|---|---|",
        *figures.rows,
        "",
        *cpu_table(figures.cpu),
        "",
        f"RSS of our provider: {ours_rss[0][1]:.1f} MiB before, {ours_rss[-1][1]:.1f} MiB "
        f"after {rss_mounts} mounts of 10 objects (max {max(r for _, r in ours_rss):.1f}); "
        f"Go provider: {go_rss[0][1]:.1f} MiB before, {go_rss[-1][1]:.1f} MiB after.",
    ]
    if plan is not None and figures.storms:
        lines += ["", *storm_table(figures, plan)]
    if plots is not None:
        from bench.plots import write_all  # matplotlib: the `bench` extra

        limits = f"cpu {plan.cpu_millis}m / memory {plan.memory_mib}Mi" if plan else ""
        names = write_all(plots, figures.latency, figures.storms, figures.rss, limits)
        lines += ["", *(f"![{title}]({name})" for name, title in names)]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--rss-mounts", type=int, default=1000)
    parser.add_argument("--latency", type=int, action="append", help="emulator ms (repeatable)")
    parser.add_argument("--write", help="replace the results section of this markdown file")
    parser.add_argument("--plots", type=Path, help="write SVG plots into this directory")
    parser.add_argument("--no-budget", action="store_true", help="skip the budget mode and storm")
    parser.add_argument("--storm-pods", type=int, default=250)
    parser.add_argument("--storm-inflight", type=int, default=25)
    parser.add_argument("--storm-rounds", type=int, default=2)
    parser.add_argument("--cpu-millis", type=int, default=50)
    parser.add_argument("--memory-mib", type=int, default=100)
    args = parser.parse_args()
    plan = None
    if not args.no_budget:
        if os.geteuid() != 0 or not budget_available():
            sys.exit("budget mode makes cgroup v1 groups: run as root, or pass --no-budget")
        plan = StormPlan(
            pods=args.storm_pods,
            inflight=args.storm_inflight,
            rounds=args.storm_rounds,
            cpu_millis=args.cpu_millis,
            memory_mib=args.memory_mib,
        )
    if args.plots is not None:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            sys.exit("--plots needs matplotlib: pip install -e '.[bench]'")
    result = run(args.rounds, args.rss_mounts, tuple(args.latency or (20, 0)), plan, args.plots)
    print(result)
    if args.write:
        path = Path(args.write)
        text = path.read_text() if path.exists() else ""
        marker = "<!-- results -->"
        head, _, rest = text.partition(marker)
        # keep the sections after ours (each starts with its own `<!-- name -->` marker)
        tail = rest[rest.index("<!-- ") :] if "<!-- " in rest else ""
        path.write_text(head.rstrip() + f"\n\n{marker}\n{result}\n\n{tail}".rstrip() + "\n")


if __name__ == "__main__":
    main()
