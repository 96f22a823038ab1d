"""A node-restart mount storm through the driver, ours beside the Go provider, each provider
under upstream's chart budget (cgroup v1 cpu 50m / memory 100Mi).

Ours: kubelet's NodePublishVolume calls (the kubelet stand-in, `inflight` at a time) to this
driver (real kube-apiserver: the SPC read, an SPCPS written per pod), which calls our provider
in its budget. `pods` pods on one SecretProviderClass and one service principal
(nodePublishSecretRef), `objects` secrets each, the emulator adding `latency` ms to every
answer. Go: the same pods' Mount calls straight to the Go provider v1.8.2 in the same budget
(bench/storm.py): the upstream driver, which cannot be built here (PEERS.md), makes one Mount
per publish, and its own cost is left out, which favours Go. Our driver runs unconstrained
(the goal budgets the provider) unless `--driver-cpu-millis` puts it in groups of its own;
its CPU during each storm is reported. Storms interleave:
ours, Go, ...; between two of ours every pod is unpublished. `--no-share` adds our storm with
`--publish-share-provider-calls=false` (one Mount per publish, as upstream).

    tests/netns-run .venv/bin/python -m bench.driver_storm [--pods 250] [--objects 10]
        [--inflight 25] [--rounds 2] [--latency 20] [--no-share] [--plot docs/x.svg]
        [--driver-cpu-millis 200] [--driver-memory-mib 200]

--plot writes the storms' completion over time as SVG (the `bench` extra: matplotlib).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import functools
import json
import os
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Secret

from bench.__main__ import SECRETS, StormPlan, request, seed, storm_attributes, trust
from bench.budget import Budget, Usage, budget
from bench.cluster import NAMESPACE, BenchCluster, bench_cluster
from bench.storm import StormResult, storm
from csi_driver.kube import SecretProviderClass
from testbed.driver import DriverProcess
from testbed.emulator import DEFAULT_SEED, Emulator
from testbed.kubelet import Kubelet, PodVolume
from testbed.peers import peer_path
from testbed.provider import ProviderProcess, ours, upstream

POD_KEYS = ("csi.storage.k8s.io/", "secretProviderClass")


@dataclass(frozen=True)
class Plan(StormPlan):
    """bench's storm; whether to add our storm with publish sharing off; the driver's own
    budget (0: unconstrained; upstream's chart gives it cpu 200m / memory 200Mi)."""

    no_share: bool = False
    driver_cpu_millis: int = 0
    driver_memory_mib: int = 200


class BudgetedDriver(DriverProcess):
    """The driver exec'd inside its cgroups (`prefix`: bench.budget's wrapper)."""

    prefix: tuple[str, ...] = ()

    def argv(self) -> list[str]:
        return [*self.prefix, *super().argv()]


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _publish_storm(kubelet: Kubelet, vols: list[PodVolume], inflight: int) -> StormResult:
    sem = asyncio.Semaphore(inflight)
    result = StormResult(0.0, 0)
    start = time.monotonic()

    async def one(v: PodVolume) -> None:
        async with sem:
            try:
                await kubelet.publish(v, deadline=120)
                result.done_at.append(time.monotonic() - start)
            except Exception as e:
                result.failures += 1
                result.first_error = result.first_error or str(e)[:300]

    await asyncio.gather(*(one(v) for v in vols))
    result.wall_seconds = time.monotonic() - start
    result.done_at.sort()
    return result


async def _unpublish_all(kubelet: Kubelet, vols: list[PodVolume]) -> None:
    sem = asyncio.Semaphore(25)

    async def one(v: PodVolume) -> None:
        async with sem:
            await kubelet.unpublish(v)

    await asyncio.gather(*(one(v) for v in vols))


async def _objects(c: BenchCluster, plan: Plan) -> None:
    await c.admin.create(
        Secret(
            metadata=ObjectMeta(name="kv-creds", namespace=NAMESPACE),
            data={k: base64.b64encode(v.encode()).decode() for k, v in SECRETS.items()},
        )
    )
    parameters = {k: v for k, v in request(plan.objects).items() if not k.startswith(POD_KEYS)}
    await c.admin.create(
        SecretProviderClass.from_dict(
            {
                "apiVersion": "secrets-store.csi.x-k8s.io/v1",
                "kind": "SecretProviderClass",
                "metadata": {"name": "storm", "namespace": NAMESPACE},
                "spec": {"provider": "azure", "parameters": parameters},
            }
        )
    )


def _start_provider(proc: ProviderProcess, group: Budget, objects: int) -> None:
    """In its groups before exec (imports charged), warmed with one Mount."""
    proc.argv = [*group.prefix, *proc.argv]
    proc.start(wait=120)
    proc.mount(storm_attributes(objects, "warm-up", "0" * 8), SECRETS, timeout=120)


def _driver(c: BenchCluster, plan: Plan, share: bool, name: str, stack: ExitStack) -> DriverProcess:
    flags = (f"--publish-share-provider-calls={str(share).lower()}",)
    d = BudgetedDriver(
        c.root,
        kubeconfig=c.driver_kubeconfig,
        provider_dirs=c.provider_dirs,
        extra=flags,
        name=name,
    )
    if plan.driver_cpu_millis:
        limits = (plan.driver_cpu_millis, plan.driver_memory_mib)
        d.prefix = tuple(stack.enter_context(budget(f"{name}-{os.getpid()}", *limits)).prefix)
    d.start()
    c.started(d)
    return d


SAVED = "node_publish_provider_calls_saved_total"


async def _ours(
    c: BenchCluster, driver: DriverProcess, plan: Plan, vols: list[PodVolume]
) -> tuple[StormResult, float, int]:
    """One storm through `driver`; then every pod unpublished. (result, driver CPU s,
    provider calls made)."""
    assert driver.proc is not None
    kubelet = Kubelet(c.admin, c.root / "kubelet", str(driver.socket))
    cpu, saved = _cpu_s(driver.proc.pid), driver.metric(SAVED)
    result = await _publish_storm(kubelet, vols, plan.inflight)
    cpu, saved = _cpu_s(driver.proc.pid) - cpu, driver.metric(SAVED) - saved
    await _unpublish_all(kubelet, vols)
    await kubelet.close()
    return result, cpu, plan.pods - result.failures - int(saved)


async def _measure(c: BenchCluster, emu: Emulator, state: Path, plan: Plan) -> dict[str, object]:
    await _objects(c, plan)
    tag = os.getpid()
    limits = (plan.cpu_millis, plan.memory_mib)
    with (
        budget(f"storm-ours-{tag}", *limits) as b_ours,
        budget(f"storm-go-{tag}", *limits) as b_go,
        ExitStack() as stack,
    ):
        mine = ours(c.provider_dirs[0] / "azure.sock", log=c.root / "provider.log")
        theirs = upstream(peer_path("azure-provider"), state / "go.sock")
        for proc, group in ((mine, b_ours), (theirs, b_go)):
            _start_provider(proc, group, plan.objects)
            c.started(proc)
        drivers = {"ours": _driver(c, plan, True, "driver", stack)}
        if plan.no_share:
            drivers["ours, sharing off"] = _driver(c, plan, False, "driver-noshare", stack)
        setup = Kubelet(c.admin, c.root / "kubelet", str(drivers["ours"].socket))
        pods = [
            await setup.create_pod(NAMESPACE, f"storm-{i:04d}", "storm", secret_ref="kv-creds")
            for i in range(plan.pods)
        ]
        vols = [await setup.volume(p) for p in pods]
        await setup.close()
        emu.set_latency(plan.latency)
        storms: dict[str, list[StormResult]] = {name: [] for name in (*drivers, "Go")}
        cpu: dict[str, list[float]] = {name: [] for name in drivers}
        calls: dict[str, list[int]] = {name: [] for name in drivers}
        use0 = {"ours": b_ours.usage(), "Go": b_go.usage()}
        attrs = functools.partial(storm_attributes, plan.objects)
        for _ in range(plan.rounds):
            for name, driver in drivers.items():
                result, used, made = await _ours(c, driver, plan, vols)
                storms[name].append(result)
                cpu[name].append(used)
                calls[name].append(made)
                print(f"storm {name}: {result.wall_seconds:.1f} s, {result.failures} failed")
            result = await asyncio.to_thread(
                storm, theirs, attrs, SECRETS, pods=plan.pods, inflight=plan.inflight
            )
            storms["Go"].append(result)
            print(f"storm Go: {result.wall_seconds:.1f} s, {result.failures} failed", flush=True)
        emu.set_latency(0)
        usage = {"ours": b_ours.usage().since(use0["ours"]), "Go": b_go.usage().since(use0["Go"])}
        for d in drivers.values():  # out of their groups before the groups go
            d.stop()
        mine.stop()
        theirs.stop()
    return _summary(plan, storms, cpu, usage) | {"provider_calls": calls}


def _summary(
    plan: Plan,
    storms: dict[str, list[StormResult]],
    cpu: dict[str, list[float]],
    usage: dict[str, Usage],
) -> dict[str, object]:
    medians = {name: statistics.median(r.wall_seconds for r in rs) for name, rs in storms.items()}
    return {
        "plan": plan.__dict__,
        "wall_s": {name: [round(r.wall_seconds, 2) for r in rs] for name, rs in storms.items()},
        "failures": {name: sum(r.failures for r in rs) for name, rs in storms.items()},
        "first_error": next(
            (r.first_error for rs in storms.values() for r in rs if r.failures), ""
        ),
        "median_wall_s": {k: round(v, 2) for k, v in medians.items()},
        "ratio_to_go": {k: round(v / medians["Go"], 3) for k, v in medians.items() if k != "Go"},
        "driver_cpu_s": {k: [round(x, 2) for x in v] for k, v in cpu.items()},
        "provider_groups": {k: u.__dict__ for k, u in usage.items()},
        "storms": storms,
    }


async def run(plan: Plan) -> dict[str, object]:
    with tempfile.TemporaryDirectory(prefix="storm-emulator-", dir="/tmp") as emu_dir:
        state = Path(emu_dir)
        trust(state)
        emu = Emulator.start(state, seeds=[DEFAULT_SEED])
        try:
            seed(emu)
            async with bench_cluster() as c:
                return await _measure(c, emu, state, plan)
        finally:
            emu.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    for name, default in Plan().__dict__.items():
        flag = "--" + name.replace("_", "-")
        if isinstance(default, bool):
            parser.add_argument(flag, action="store_true")
        else:
            parser.add_argument(flag, type=int, default=default)
    parser.add_argument("--plot", help="write the storms' completion over time (SVG) here")
    args = parser.parse_args()
    plan = Plan(**{k: getattr(args, k) for k in Plan().__dict__})
    if os.geteuid() != 0:
        sys.exit("the budget makes cgroup v1 groups: run as root")
    result = asyncio.run(run(plan))
    storms = result.pop("storms")
    print(json.dumps(result, indent=2))
    if args.plot:
        from bench.plots import storm_completion  # matplotlib: the `bench` extra

        limits = f"cpu {plan.cpu_millis}m / memory {plan.memory_mib}Mi per provider"
        storm_completion(Path(args.plot), storms, limits)  # type: ignore[arg-type]


if __name__ == "__main__":
    main()
