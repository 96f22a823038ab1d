"""Benchmark: N concurrent NodePublishVolume calls of different volumes, then unpublish.

Real kube-apiserver + etcd (+ kube-controller-manager), the driver as a process under its
own ServiceAccount, the fake test provider (answers at once: this measures the driver, not
Key Vault). Reports wall time, per-call latency, driver RSS, leftover mounts.

`--cycles N` then publishes and unpublishes every volume again and again (all at once, then all
undone) until N publish/unpublish cycles are done, sampling the driver's RSS every `--sample`
cycles: is it flat?

Run (root, private namespace):
    tests/netns-run .venv/bin/python bench/driver_publish.py [--volumes 50] [--files 10]
        [--cycles 10000] [--sample 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


from bench.cluster import bench_cluster
from csi_driver import mounter
from csi_driver.kube import SecretProviderClass
from testbed.driver import DriverProcess
from testbed.kubelet import Kubelet, PodVolume
from testbed.provider import ProviderProcess

SETTLE_S = 3.0  # csi_driver.heap.QUIET_SECONDS and a margin


async def _settled_mib(pid: int) -> float:
    await asyncio.sleep(SETTLE_S)
    return round(_rss_kib(pid)[0] / 1024, 1)


def _rss_kib(pid: int) -> tuple[int, int]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])


async def _cycles(
    kubelet: Kubelet, vols: list[PodVolume], pid: int, cycles: int, sample: int
) -> list[tuple[int, float, float]]:
    """(cycles done, RSS MiB at once, RSS MiB settled) from the first sample on."""
    series = [(0, round(_rss_kib(pid)[0] / 1024, 1), await _settled_mib(pid))]
    done = 0
    while done < cycles:
        batch = vols[: cycles - done]
        await asyncio.gather(*(kubelet.publish(v) for v in batch))
        await asyncio.gather(*(kubelet.unpublish(v) for v in batch))
        before, done = done, done + len(batch)
        if done // sample > before // sample or done == cycles:
            at_once = round(_rss_kib(pid)[0] / 1024, 1)
            series.append((done, at_once, await _settled_mib(pid)))
            print(
                f"{done} cycles: driver RSS {at_once} MiB, {series[-1][2]} MiB settled",
                file=sys.stderr,
                flush=True,
            )
    return series


async def run(volumes: int, files: int, cycles: int = 0, sample: int = 1000) -> dict[str, object]:
    async with bench_cluster() as c:
        root, admin, dirs = c.root, c.admin, c.provider_dirs
        provider = ProviderProcess.fake(dirs[0] / "fake.sock", root / "provider.log")
        provider.start()
        c.started(provider)
        driver = DriverProcess(root, kubeconfig=c.driver_kubeconfig, provider_dirs=dirs)
        driver.start()
        c.started(driver)
        assert driver.proc is not None
        rss_idle, _ = _rss_kib(driver.proc.pid)
        payload = {f"secret-{i}": "x" * 1024 for i in range(files)}
        await admin.create(
            SecretProviderClass.from_dict(
                {
                    "apiVersion": "secrets-store.csi.x-k8s.io/v1",
                    "kind": "SecretProviderClass",
                    "metadata": {"name": "bench", "namespace": "bench"},
                    "spec": {
                        "provider": "fake",
                        "parameters": {"fake.files": json.dumps(payload)},
                    },
                }
            )
        )
        kubelet = Kubelet(admin, root / "kubelet", str(driver.socket))
        pods = await asyncio.gather(
            *(kubelet.create_pod("bench", f"app-{i}", "bench") for i in range(volumes))
        )
        vols = await asyncio.gather(*(kubelet.volume(p) for p in pods))
        await kubelet.publish(vols[0])  # warm-up: channels, SPC cache, thread pool
        await kubelet.unpublish(vols[0])

        latencies: list[float] = []

        async def one(v: object) -> None:
            t0 = time.perf_counter()
            await kubelet.publish(v)  # type: ignore[arg-type]
            latencies.append(time.perf_counter() - t0)

        t0 = time.perf_counter()
        await asyncio.gather(*(one(v) for v in vols))
        publish_wall = time.perf_counter() - t0
        rss, hwm = _rss_kib(driver.proc.pid)
        rss_settled = await _settled_mib(driver.proc.pid)
        ok = all((v.target / "secret-0").read_text() == "x" * 1024 for v in vols)
        t0 = time.perf_counter()
        await asyncio.gather(*(kubelet.unpublish(v) for v in vols))
        unpublish_wall = time.perf_counter() - t0
        # one at a time: the latency of a single publish with nothing else going on
        sequential: list[float] = []
        for v in vols[:10]:
            t1 = time.perf_counter()
            await kubelet.publish(v)
            sequential.append(time.perf_counter() - t1)
            await kubelet.unpublish(v)
        series = await _cycles(kubelet, vols, driver.proc.pid, cycles, sample) if cycles else []
        leftover = [p for p in mounter.mount_points() if p.startswith(f"{root}/")]
        await kubelet.close()
        return {
            "rss_mib_over_cycles": series,
            "volumes": volumes,
            "files_per_volume": files,
            "all_published_and_readable": ok,
            "publish_wall_s": round(publish_wall, 3),
            "publish_p50_ms": round(statistics.median(latencies) * 1000, 1),
            "publish_max_ms": round(max(latencies) * 1000, 1),
            "unpublish_wall_s": round(unpublish_wall, 3),
            "single_publish_p50_ms": round(statistics.median(sequential) * 1000, 1),
            "driver_rss_idle_mib": round(rss_idle / 1024, 1),
            "driver_rss_after_mib": round(rss / 1024, 1),
            "driver_rss_settled_mib": rss_settled,
            "driver_rss_peak_mib": round(hwm / 1024, 1),
            "leftover_mounts": len(leftover),
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--volumes", type=int, default=50)
    parser.add_argument("--files", type=int, default=10)
    parser.add_argument("--cycles", type=int, default=0)
    parser.add_argument("--sample", type=int, default=1000)
    args = parser.parse_args()
    result = asyncio.run(run(args.volumes, args.files, args.cycles, args.sample))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
