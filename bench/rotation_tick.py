"""Benchmark: one rotation tick over N pods x M objects sharing one SPC and service account.

Real kube-apiserver + etcd (+ kube-controller-manager), the Key Vault emulator, provider_azure
and this driver as processes (service principal from a nodePublishSecretRef). Publishes N pods,
then counts the Key Vault requests of the next rotation tick from the emulator's request log,
with provider-call sharing on, then again (driver restarted) with it off. Also the tick's wall
time (the driver's "rotation tick" log line) and the driver's CPU during it.

With `--runs N` it measures N intervals instead, sharing on, while the kubelet stand-in
republishes every pod again and again from 85 % of the interval until the tick (so due
republishes and the tick come in either order): Key Vault GETs and provider Mount calls (the
provider's own counter) per interval, and their min/median/max.

Run (root, private namespace):
    tests/netns-run .venv/bin/python bench/rotation_tick.py [--pods 100] [--objects 10]
        [--runs 20] [--interval 10]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

import grpc
import grpc.aio

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import yaml
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Secret

from bench.__main__ import trust
from bench.cluster import BenchCluster, bench_cluster
from csi_driver.kube import SecretProviderClass
from testbed.driver import DriverProcess
from testbed.emulator import DEFAULT_SEED, TENANT_ID, Emulator
from testbed.kubelet import Kubelet, PodVolume
from testbed.ports import free_port
from testbed.provider import mount_calls, ours

VAULT = "kv-bench"
SP_ID, SP_SECRET = "0d000021-0000-4000-8000-0000000000f1", "rotation-bench-secret"
INTERVAL = 30.0
TICK = re.compile(r"rotation tick: (\d+) mounts due, (\d+) provider calls, ([0-9.]+)s")


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _tick_line(driver: DriverProcess, seen: int, within: float) -> tuple[int, int]:
    """Waits for a tick line after the first `seen` that looked at mounts: (its index + 1,
    the provider calls it made)."""
    deadline = time.monotonic() + within
    while True:
        ticks = TICK.findall(driver.logs())
        for i in range(seen, len(ticks)):
            if int(ticks[i][0]):
                return i + 1, int(ticks[i][1])
        if time.monotonic() > deadline:
            raise TimeoutError("no rotation tick")
        await asyncio.sleep(0.05)


async def _republish(kubelet: Kubelet, vols: list[PodVolume], inflight: int) -> None:
    """One republish of every pod, `inflight` at a time; Aborted (files being swapped) is
    retried at kubelet's next sync, as kubelet does."""
    sem = asyncio.Semaphore(inflight)

    async def one(v: PodVolume) -> None:
        async with sem:
            try:
                await kubelet.publish(v)
            except grpc.aio.AioRpcError as e:
                if e.code() != grpc.StatusCode.ABORTED:
                    raise

    await asyncio.gather(*(one(v) for v in vols))


async def _interval_runs(
    emu: Emulator,
    driver: DriverProcess,
    kubelet: Kubelet,
    vols: list[PodVolume],
    port: int,
    runs: int,
    interval: float,
) -> dict[str, object]:
    """Key Vault GETs and provider calls from one tick line to the next, republishes racing."""
    seen, _ = await _tick_line(driver, 0, 3 * interval)
    gets, calls, tick_calls = [], [], []
    for _ in range(runs):
        emu.clear_requests()
        mounts = mount_calls(port)
        await asyncio.sleep(0.85 * interval)
        tick = asyncio.ensure_future(_tick_line(driver, seen, 3 * interval))
        while not tick.done():
            await _republish(kubelet, vols, 25)
            await asyncio.sleep(0.05)
        seen, made = await tick
        tick_calls.append(made)
        gets.append(len(emu.requests(service="kv", method="GET")))
        calls.append(mount_calls(port) - mounts)
    return {
        "runs": runs,
        "interval_s": interval,
        "key_vault_gets": gets,
        "provider_calls": calls,
        # 0: the republishes came first and the tick took their call's answer
        "calls_made_by_the_tick": tick_calls,
        "gets_min_median_max": [min(gets), statistics.median(gets), max(gets)],
        "calls_min_median_max": [min(calls), statistics.median(calls), max(calls)],
    }


async def _one_tick(emu: Emulator, driver: DriverProcess, interval: float) -> dict[str, object]:
    """Waits for the driver's next tick line; counts what happened since the last one."""
    assert driver.proc is not None
    seen = len(TICK.findall(driver.logs()))
    emu.clear_requests()
    cpu0 = _cpu_s(driver.proc.pid)
    deadline = time.monotonic() + 3 * interval
    while True:
        ticks = TICK.findall(driver.logs())
        if len(ticks) > seen and int(ticks[seen][0]) > 0:
            break
        if time.monotonic() > deadline:
            raise TimeoutError("no rotation tick")
        await asyncio.sleep(0.1)
    cpu = _cpu_s(driver.proc.pid) - cpu0
    due, calls, wall = ticks[seen]
    reqs = emu.requests(service="kv")
    return {
        "mounts": int(due),
        "provider_calls": int(calls),
        "key_vault_requests": len(reqs),
        "key_vault_gets": sum(1 for r in reqs if r["method"] == "GET"),
        "entra_requests": len(emu.requests(service="entra")),
        "tick_wall_s": float(wall),
        "driver_cpu_s": round(cpu, 2),
    }


async def run(
    pods: int, objects: int, runs: int = 0, interval: float = INTERVAL
) -> dict[str, object]:
    with tempfile.TemporaryDirectory(prefix="bench-emulator-", dir="/tmp") as emu_dir:
        trust(Path(emu_dir))
        emu = Emulator.start(Path(emu_dir), seeds=[DEFAULT_SEED])
        try:
            async with bench_cluster() as c:
                return await _measure(c, emu, pods, objects, runs, interval)
        finally:
            emu.stop()


async def _measure(
    c: BenchCluster, emu: Emulator, pods: int, objects: int, runs: int, interval: float
) -> dict[str, object]:
    root, admin, dirs = c.root, c.admin, c.provider_dirs
    emu.seed(
        {
            "identities": [
                {
                    "name": "rb-sp",
                    "type": "servicePrincipal",
                    "clientId": SP_ID,
                    "clientSecret": SP_SECRET,
                }
            ],
            "vaults": [
                {
                    "name": VAULT,
                    "tenant": TENANT_ID,
                    "roleAssignments": [{"identity": "rb-sp", "role": "Key Vault Secrets User"}],
                    "secrets": [{"name": f"rot-{i:02d}", "value": f"v{i}"} for i in range(objects)],
                }
            ],
        }
    )
    await admin.create(
        Secret(
            metadata=ObjectMeta(name="kv-creds", namespace="bench"),
            data={
                "clientid": base64.b64encode(SP_ID.encode()).decode(),
                "clientsecret": base64.b64encode(SP_SECRET.encode()).decode(),
            },
        )
    )
    items = [
        yaml.safe_dump({"objectName": f"rot-{i:02d}", "objectType": "secret"})
        for i in range(objects)
    ]
    await admin.create(
        SecretProviderClass.from_dict(
            {
                "apiVersion": "secrets-store.csi.x-k8s.io/v1",
                "kind": "SecretProviderClass",
                "metadata": {"name": "bench", "namespace": "bench"},
                "spec": {
                    "provider": "azure",
                    "parameters": {
                        "keyvaultName": VAULT,
                        "tenantId": TENANT_ID,
                        "objects": yaml.safe_dump({"array": items}),
                    },
                },
            }
        )
    )
    sock = dirs[0] / "azure.sock"
    port = free_port()
    provider = ours(sock, prometheus_port=port, log=root / "provider.log")
    provider.start()
    c.started(provider)
    flags = ("--enable-secret-rotation=true", f"--rotation-poll-interval={interval:g}s")
    driver = DriverProcess(root, kubeconfig=c.driver_kubeconfig, provider_dirs=dirs, extra=flags)
    driver.start()
    c.started(driver)
    kubelet = Kubelet(admin, root / "kubelet", str(driver.socket))
    created = await asyncio.gather(
        *(
            kubelet.create_pod("bench", f"app-{i}", "bench", secret_ref="kv-creds")
            for i in range(pods)
        )
    )
    vols = await asyncio.gather(*(kubelet.volume(p) for p in created))
    t0 = time.perf_counter()
    sem = asyncio.Semaphore(20)

    async def publish(v: object) -> None:
        async with sem:
            await kubelet.publish(v)  # type: ignore[arg-type]

    await asyncio.gather(*(publish(v) for v in vols))
    publish_wall = time.perf_counter() - t0
    if runs:
        await _republish(kubelet, vols, 25)  # kubelet's first republish starts each clock
        result = await _interval_runs(emu, driver, kubelet, vols, port, runs, interval)
        await kubelet.close()
        return {"pods": pods, "objects_per_pod": objects, **result}
    shared = await _one_tick(emu, driver, interval)
    driver.stop()
    driver = DriverProcess(
        root,
        kubeconfig=c.driver_kubeconfig,
        provider_dirs=dirs,
        extra=(*flags, "--rotation-share-provider-calls=false"),
        name="driver-noshare",
    )
    driver.start()
    c.started(driver)
    unshared = await _one_tick(emu, driver, interval)
    await kubelet.close()
    return {
        "pods": pods,
        "objects_per_pod": objects,
        "publish_wall_s": round(publish_wall, 2),
        "upstream_model_key_vault_gets": pods * objects,
        "tick_shared": shared,
        "tick_not_shared": unshared,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pods", type=int, default=100)
    parser.add_argument("--objects", type=int, default=10)
    parser.add_argument("--runs", type=int, default=0, help="intervals with republishes racing")
    parser.add_argument("--interval", type=float, default=INTERVAL, help="seconds")
    args = parser.parse_args()
    result = asyncio.run(run(args.pods, args.objects, args.runs, args.interval))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
