"""Benchmark: one rotation tick over N pods x M objects sharing one SPC and service account.

Real kube-apiserver + etcd (+ kube-controller-manager), the Key Vault emulator, provider_azure
and this driver as processes (service principal from a nodePublishSecretRef). Publishes N pods,
then counts the Key Vault requests of the next rotation tick from the emulator's request log,
with provider-call sharing on, then again (driver restarted) with it off. Also the tick's wall
time (the driver's "rotation tick" log line) and the driver's CPU during it.

Run (root, private namespace):
    tests/netns-run .venv/bin/python bench/rotation_tick.py [--pods 100] [--objects 10]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path

from testbed.provider import ours

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import yaml
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Secret

from bench.__main__ import trust
from bench.cluster import BenchCluster, bench_cluster
from csi_driver.kube import SecretProviderClass
from testbed.driver import DriverProcess
from testbed.emulator import DEFAULT_SEED, TENANT_ID, Emulator
from testbed.kubelet import Kubelet

VAULT = "kv-bench"
SP_ID, SP_SECRET = "0d000021-0000-4000-8000-0000000000f1", "rotation-bench-secret"
INTERVAL = 30.0
TICK = re.compile(r"rotation tick: (\d+) mounts due, (\d+) provider calls, ([0-9.]+)s")


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _one_tick(emu: Emulator, driver: DriverProcess) -> dict[str, object]:
    """Waits for the driver's next tick line; counts what happened since the last one."""
    assert driver.proc is not None
    seen = len(TICK.findall(driver.logs()))
    emu.clear_requests()
    cpu0 = _cpu_s(driver.proc.pid)
    deadline = time.monotonic() + 3 * INTERVAL
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


async def run(pods: int, objects: int) -> dict[str, object]:
    with tempfile.TemporaryDirectory(prefix="bench-emulator-", dir="/tmp") as emu_dir:
        trust(Path(emu_dir))
        emu = Emulator.start(Path(emu_dir), seeds=[DEFAULT_SEED])
        try:
            async with bench_cluster() as c:
                return await _measure(c, emu, pods, objects)
        finally:
            emu.stop()


async def _measure(c: BenchCluster, emu: Emulator, pods: int, objects: int) -> dict[str, object]:
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
    provider = ours(sock, log=root / "provider.log")
    provider.start()
    c.started(provider)
    flags = ("--enable-secret-rotation=true", f"--rotation-poll-interval={INTERVAL:g}s")
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
    shared = await _one_tick(emu, driver)
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
    unshared = await _one_tick(emu, driver)
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
    args = parser.parse_args()
    print(json.dumps(asyncio.run(run(args.pods, args.objects)), indent=2))


if __name__ == "__main__":
    main()
