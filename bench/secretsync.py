"""Benchmark: the SecretSync controller, N SecretSyncs over M SecretProviderClasses.

Real kube-apiserver + etcd + kube-controller-manager (bench/cluster.py), the Key Vault emulator
trusting the cluster's service-account issuer (workload identity), our provider as the
controller's sidecar, the controller as its own ServiceAccount (daemonset/sync-controller/
rbac.yaml) with leader election. Each SPC holds its own objects; the SecretSyncs of one SPC
share the service account, so a poll should cost one provider call per SPC and one Key Vault
GET per distinct object.

Measured: the first sync of all (wall time, Key Vault GETs, API writes); one poll with nothing
changed (Key Vault GETs, API writes by resource: the goal is none, API reads); one poll after
one object changed; the controller's RSS (now and peak). API requests are the API server's own
counters (`apiserver_request_total`), Key Vault's the emulator's request log.

Run (root, private namespace):
    tests/netns-run .venv/bin/python -m bench.secretsync [--syncs 500] [--spcs 50]
        [--objects 2] [--poll 30]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx2 as httpx
from lightkube import AsyncClient
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import ServiceAccount

from bench.__main__ import trust
from bench.cluster import NAMESPACE, BenchCluster, bench_cluster
from csi_driver.kube import SecretProviderClass
from sync_controller.api import SecretSync
from testbed.controlplane import ISSUER, service_account_kubeconfig
from testbed.emulator import DEFAULT_SEED, TENANT_ID, Emulator
from testbed.mount_attributes import objects_yaml
from testbed.provider import ours
from testbed.secretsync import secretsync_body, spc_body
from testbed.sync_controller import SyncControllerProcess

VAULT = "kv-bench"
CLIENT = "0e000001-0000-4000-8000-0000000005b1"
AUDIENCE = "api://AzureADTokenExchange"
ACCOUNT = "app"
CONTROLLER_SA = "secrets-store-sync-controller-manager"
WRITES = ("POST", "PUT", "PATCH", "DELETE", "APPLY")
BENCH_OWN = {"POST secretsyncs", "POST serviceaccounts", "LIST secretsyncs"}  # not the controller's
RESOURCES = ("secrets", "secretsyncs", "events", "serviceaccounts", "leases")
_SERIES = re.compile(r"^apiserver_request_total\{([^}]*)\} ([0-9.e+]+)$")
_LABEL = re.compile(r'(\w+)="([^"]*)"')


def _seed(emu: Emulator, jwks: dict[str, Any], spcs: int, objects: int) -> None:
    emu.seed(
        {
            "issuers": [{"issuer": ISSUER, "jwks": jwks}],
            "identities": [
                {
                    "name": "ss-wi",
                    "type": "application",
                    "clientId": CLIENT,
                    "federatedCredentials": [
                        {
                            "issuer": ISSUER,
                            "subject": f"system:serviceaccount:{NAMESPACE}:{ACCOUNT}",
                            "audience": AUDIENCE,
                        }
                    ],
                }
            ],
            "vaults": [
                {
                    "name": VAULT,
                    "tenant": TENANT_ID,
                    "roleAssignments": [{"identity": "ss-wi", "role": "Key Vault Secrets User"}],
                    "secrets": [
                        {"name": _object(s, o), "value": f"value-{s}-{o}"}
                        for s in range(spcs)
                        for o in range(objects)
                    ],
                }
            ],
        }
    )


def _object(spc: int, obj: int) -> str:
    return f"ss-{spc:03d}-{obj}"


def _spc(spc: int, objects: int) -> dict[str, Any]:
    items = ({"objectName": _object(spc, o), "objectType": "secret"} for o in range(objects))
    return spc_body(
        f"spc-{spc:03d}", NAMESPACE, vault=VAULT, client_id=CLIENT, objects=objects_yaml(*items)
    )


def _secretsync(i: int, spc: int, objects: int) -> dict[str, Any]:
    data = {_object(spc, o): f"k{o}" for o in range(objects)}
    return secretsync_body(
        f"ss-{i:04d}", NAMESPACE, f"spc-{spc:03d}", data, service_account=ACCOUNT
    )


class ApiCounts:
    """The API server's request counters, by (verb, resource[/subresource])."""

    def __init__(self, c: BenchCluster) -> None:
        self.url = f"{c.cp.server}/metrics"
        self.headers = {"Authorization": f"Bearer {c.cp.admin_token}"}
        self.ca = str(c.cp.ca_file)

    async def read(self) -> dict[tuple[str, str], float]:
        async with httpx.AsyncClient(verify=self.ca) as http:
            text = (await http.get(self.url, headers=self.headers)).text
        out: dict[tuple[str, str], float] = {}
        for line in text.splitlines():
            m = _SERIES.match(line)
            if m is None:
                continue
            labels = dict(_LABEL.findall(m.group(1)))
            if labels.get("resource") not in RESOURCES:
                continue
            sub = labels.get("subresource", "")
            key = (labels["verb"], labels["resource"] + (f"/{sub}" if sub else ""))
            out[key] = out.get(key, 0.0) + float(m.group(2))
        return out


def _delta(
    before: dict[tuple[str, str], float], after: dict[tuple[str, str], float], writes: bool
) -> dict[str, int]:
    out: dict[str, int] = {}
    for (verb, resource), n in after.items():
        if (verb in WRITES) != writes or verb == "WATCH":
            continue
        d = int(n - before.get((verb, resource), 0.0))
        if d and f"{verb} {resource}" not in BENCH_OWN:
            out[f"{verb} {resource}"] = d
    return dict(sorted(out.items()))


def _reconciles(metrics_url: str) -> float:
    text = httpx.get(metrics_url).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("secretsync_reconcile_total{")
    )


def _rss_mib(pid: int) -> dict[str, float]:
    fields = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
    )
    return {
        "rss_mib": round(int(fields["VmRSS"].split()[0]) / 1024, 1),
        "rss_peak_mib": round(int(fields["VmHWM"].split()[0]) / 1024, 1),
    }


async def _until(check: Any, within: float, what: str, step: float = 0.5) -> None:
    deadline = time.monotonic() + within
    while not await check():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        await asyncio.sleep(step)


async def _all_synced(admin: AsyncClient, n: int) -> bool:
    synced = 0
    async for s in admin.list(SecretSync, namespace=NAMESPACE):
        obj: dict[str, Any] = s.to_dict()  # type: ignore[no-untyped-call]
        conds = (obj.get("status") or {}).get("conditions") or []
        synced += any(c["type"] == "SecretUpdated" and c["status"] == "True" for c in conds)
    return synced == n


class Measure:
    """Key Vault and API server counts between two points."""

    def __init__(self, emu: Emulator, api: ApiCounts) -> None:
        self.emu, self.api = emu, api
        self.before: dict[tuple[str, str], float] = {}

    async def start(self) -> None:
        self.emu.clear_requests()
        self.before = await self.api.read()

    async def done(self) -> dict[str, Any]:
        after = await self.api.read()
        kv = self.emu.requests(service="kv")
        return {
            "key_vault_gets": sum(1 for r in kv if r["method"] == "GET"),
            "key_vault_gets_by_status": dict(
                sorted(Counter(str(r["status"]) for r in kv if r["method"] == "GET").items())
            ),
            "entra_requests": len(self.emu.requests(service="entra")),
            "api_writes": _delta(self.before, after, writes=True),
            "api_reads": _delta(self.before, after, writes=False),
        }


async def _one_poll(metrics_url: str, n: int, poll: float) -> float:
    """Waits for the next poll's `n` reconciles to be done; its wall time from the first."""
    base = await asyncio.to_thread(_reconciles, metrics_url)

    async def started() -> bool:
        return await asyncio.to_thread(_reconciles, metrics_url) > base

    await _until(started, poll * 2, "a poll", 0.05)
    t0 = time.monotonic()

    async def finished() -> bool:
        return await asyncio.to_thread(_reconciles, metrics_url) >= base + n

    await _until(finished, poll, "the poll's reconciles", 0.05)
    return time.monotonic() - t0


async def _create(c: BenchCluster, syncs: int, spcs: int, objects: int) -> None:
    admin = c.admin
    await admin.create(ServiceAccount(metadata=ObjectMeta(name=ACCOUNT, namespace=NAMESPACE)))
    for s in range(spcs):
        await admin.create(SecretProviderClass.from_dict(_spc(s, objects)))
    sem = asyncio.Semaphore(20)

    async def one(i: int) -> None:
        async with sem:
            await admin.create(SecretSync.from_dict(_secretsync(i, i % spcs, objects)))

    await asyncio.gather(*(one(i) for i in range(syncs)))


async def _measure(
    c: BenchCluster, emu: Emulator, syncs: int, spcs: int, objects: int, poll: float
) -> dict[str, Any]:
    jwks = httpx.get(
        f"{c.cp.server}/openid/v1/jwks",
        headers={"Authorization": f"Bearer {c.cp.admin_token}"},
        verify=str(c.cp.ca_file),
    ).json()
    _seed(emu, jwks, spcs, objects)
    provider = ours(c.provider_dirs[0] / "azure.sock", log=c.root / "provider.log")
    provider.start()
    c.started(provider)
    kubeconfig = await service_account_kubeconfig(
        c.cp, c.admin, "kube-system", CONTROLLER_SA, c.root / "controller.kubeconfig"
    )
    controller = SyncControllerProcess(
        kubeconfig,
        c.provider_dirs[0],
        c.root / "controller.log",
        f"--token-request-audience={AUDIENCE}",
        f"--rotation-poll-interval={poll:g}s",
        "--leader-elect",
    ).start()
    c.started(controller)
    assert controller.proc is not None
    metrics_url = "http://" + next(
        a.split("=", 1)[1] for a in controller.argv if a.startswith("--metrics-bind-address=")
    )
    api = ApiCounts(c)
    m = Measure(emu, api)

    await m.start()
    t0 = time.monotonic()
    await _create(c, syncs, spcs, objects)
    try:
        await _until(lambda: _all_synced(c.admin, syncs), poll * 10, "all SecretSyncs synced")
    except TimeoutError:
        print(controller.text()[-3000:], (c.root / "provider.log").read_text()[-2000:])
        raise
    first = {"wall_s": round(time.monotonic() - t0, 1), **await m.done()}
    await asyncio.sleep(poll / 2)  # past the shared-call window (poll/2): a poll calls again

    await m.start()
    idle_wall = await _one_poll(metrics_url, syncs, poll)
    idle = {"wall_s": round(idle_wall, 1), **await m.done(), **_rss_mib(controller.proc.pid)}

    emu.set_secret(VAULT, _object(0, 0), "changed")
    await asyncio.sleep(poll / 2)
    await m.start()
    changed_wall = await _one_poll(metrics_url, syncs, poll)
    changed = {"wall_s": round(changed_wall, 1), **await m.done()}
    return {
        "secretsyncs": syncs,
        "spcs": spcs,
        "objects_per_spc": objects,
        "distinct_objects": spcs * objects,
        "poll_s": poll,
        "first_sync": first,
        "idle_poll": idle,
        "poll_after_one_object_changed": changed,
        "controller": _rss_mib(controller.proc.pid),
    }


async def run(syncs: int, spcs: int, objects: int, poll: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-emulator-", dir="/tmp") as emu_dir:
        trust(Path(emu_dir))
        emu = Emulator.start(Path(emu_dir), seeds=[DEFAULT_SEED])
        try:
            async with bench_cluster() as c:
                return await _measure(c, emu, syncs, spcs, objects, poll)
        finally:
            emu.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--syncs", type=int, default=500)
    parser.add_argument("--spcs", type=int, default=50)
    parser.add_argument("--objects", type=int, default=2, help="objects per SPC")
    parser.add_argument("--poll", type=float, default=30.0, help="rotation poll interval, s")
    args = parser.parse_args()
    print(json.dumps(asyncio.run(run(args.syncs, args.spcs, args.objects, args.poll)), indent=2))


if __name__ == "__main__":
    main()
