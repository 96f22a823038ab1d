"""Issue 14 on a real node (kubelet 1.37 + containerd, testbed/node.py): node start and provider
restarts leave no pod stuck and no mount failed for want of the provider.

One node serves every story, in order:
1. Node restart: PODS pods already bound to the node (spec.nodeName) before kubelet starts;
   kubelet up, then the driver (with `--remove-startup-taint`), and the provider PROVIDER_LAG
   seconds after the driver serves. Every pod runs, no FailedMount other than kubelet's own
   "driver not registered yet", all Running within RUN_WITHIN of the provider serving.
2. The startup taint, on the same start: kubelet registers the node with
   `secrets-store.csi.k8s.io/agent-not-ready:NoSchedule`; HELD pods created (unbound, not
   tolerating it) before the driver is ready stay unscheduled while the provider is missing,
   then start, with no FailedMount, once the driver has removed the taint.
3. The provider restarted (SIGTERM, back RESTART_GAP seconds later, as a DaemonSet pod is
   replaced) while CREATED pods are being created: 0 failed publishes.
4. For comparison, story 1 with the upstream Go provider v1.8.2: all pods gone, driver and
   provider stopped, the driver started, PODS new pods bound, the Go provider PROVIDER_LAG
   seconds after the driver. kubelet stays up here (restarting it from this process once the
   registrar's gRPC threads exist is unsafe: testbed/node.py forks with a preexec_fn).

Figures are printed (`-s`) and kept in docs/troubleshooting.md, "Node start and provider
restarts".
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from lightkube import ApiError, AsyncClient
from lightkube.codecs import from_dict
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Event, Namespace, Pod, Secret
from lightkube.resources.core_v1 import Node as NodeObject

from csi_driver import mounter
from csi_driver.kube import SecretProviderClass
from csi_driver.startup_taint import TAINT_KEY
from testbed import images
from testbed.controlplane import (
    driver_token_kubeconfig,
    manifests,
    prepare_cluster,
    wait_default_service_account,
)
from testbed.driver import DriverProcess
from testbed.emulator import TENANT_ID, Emulator
from testbed.node import NODE_NAME, NODE_PEERS, Node, new_node
from testbed.peers import peer, require_programs
from testbed.provider import ProviderProcess, ours, upstream
from testbed.registrar import Registrar
from testbed.rundir import reap_stale, run_dir, unmount_under

pytestmark = pytest.mark.filterwarnings("ignore:`verify=<str>` is deprecated:DeprecationWarning")

DRIVER = "secrets-store.csi.k8s.io"
NAMESPACE = "node-start"
VAULT = "kv-node-start"
SP_CLIENT, SP_SECRET = "0e000004-0000-4000-8000-0000000000e4", "node-start-secret"
PODS = 10  # bound to the node before kubelet starts
HELD = 4  # created unbound before the driver is ready: held by the taint
CREATED = 20  # created while the provider restarts
PROVIDER_LAG = 10.0  # the provider starts this long after the driver serves
RUN_WITHIN = 10.0  # every pod Running within this of the provider serving
RESTART_GAP = 2.0  # provider down this long (a DaemonSet pod replaced)
NOT_REGISTERED = "not found in the list of registered CSI drivers"  # kubelet's, before the driver
SLEEP = "trap 'exit 0' TERM; sleep 3600 & wait"


@dataclass
class World:
    node: Node
    admin: AsyncClient
    driver: DriverProcess
    provider: ProviderProcess
    tmp: Path
    spc: str
    creds: str
    registrar: Registrar | None = None
    figures: dict[str, Any] = field(default_factory=dict)


def _seed(emulator: Emulator) -> None:
    emulator.seed(
        {
            "identities": [
                {
                    "name": "node-start-sp",
                    "type": "servicePrincipal",
                    "clientId": SP_CLIENT,
                    "clientSecret": SP_SECRET,
                }
            ],
            "vaults": [
                {
                    "name": VAULT,
                    "tenant": TENANT_ID,
                    "roleAssignments": [
                        {"identity": "node-start-sp", "role": "Key Vault Secrets User"}
                    ],
                    "secrets": [{"name": "db-password", "value": "from-node-start-vault"}],
                }
            ],
        }
    )


@pytest.fixture(scope="module")
def vault_resolves() -> Iterator[None]:
    if os.environ.get("NETNS_RUN_INSIDE") != "1":
        pytest.fail("run inside tests/netns-run", pytrace=False)
    hosts = Path("/etc/hosts")
    line = f"127.0.0.1 {VAULT}.vault.azure.net\n"
    hosts.write_text(hosts.read_text() + line)
    yield
    hosts.write_text(hosts.read_text().replace(line, ""))


@pytest.fixture(scope="module")
async def world(emulator: Emulator, vault_resolves: None) -> AsyncIterator[World]:
    """A node whose control plane, scheduler and containerd run, kubelet, driver and provider
    not started yet (the stories start them)."""
    require_programs(
        "containerd", "containerd-shim-runc-v2", "runc", "ctr", "busybox", who="node-start tier"
    )
    bins = {n: peer(n) for n in NODE_PEERS}
    reap_stale()
    tmp = run_dir()
    node = new_node(tmp, bins)
    cp = node.cp
    admin: AsyncClient | None = None
    w: World | None = None
    try:
        node.start_runtime()
        cp.start()
        admin = await prepare_cluster(cp)
        for doc in manifests("rbac-startup-taint.yaml"):
            await admin.apply(from_dict(doc), field_manager="tests", force=True)  # type: ignore[arg-type]
        node.start_scheduler()
        _seed(emulator)
        await admin.create(Namespace(metadata=ObjectMeta(name=NAMESPACE)))
        await wait_default_service_account(admin, NAMESPACE, attempts=600)
        creds = "kv-creds"
        await admin.create(
            Secret(
                metadata=ObjectMeta(name=creds, namespace=NAMESPACE),
                stringData={"clientid": SP_CLIENT, "clientsecret": SP_SECRET},
            )
        )
        spc = "node-start"
        await admin.create(
            SecretProviderClass.from_dict(
                {
                    "apiVersion": "secrets-store.csi.x-k8s.io/v1",
                    "kind": "SecretProviderClass",
                    "metadata": {"name": spc, "namespace": NAMESPACE},
                    "spec": {
                        "provider": "azure",
                        "parameters": {
                            "keyvaultName": VAULT,
                            "tenantId": TENANT_ID,
                            "objects": yaml.safe_dump(
                                {
                                    "array": [
                                        yaml.safe_dump(
                                            {"objectName": "db-password", "objectType": "secret"}
                                        )
                                    ]
                                }
                            ),
                        },
                    },
                }
            )
        )
        providers = tmp / "providers"
        providers.mkdir()
        provider = ours(providers / "azure.sock", log=tmp / "provider.log")
        driver = node.plugin_driver(await driver_token_kubeconfig(cp, admin), providers, "2m")
        driver.extra = (*driver.extra, "--remove-startup-taint", "--startup-taint-providers=azure")
        w = World(node, admin, driver, provider, tmp, spc, creds)
        yield w
    finally:
        try:
            if admin is not None:
                await _delete_pods(admin)
            node.stop()
        finally:
            if w is not None:
                if w.registrar is not None:
                    w.registrar.stop()
                if w.driver.proc is not None:
                    shutil.copy(w.driver.log, "/tmp/node-start-driver.log")
                    w.driver.stop()
                w.provider.stop()
            if admin is not None:
                await admin.close()
            cp.stop()
            unmount_under(tmp)
            shutil.rmtree(tmp, ignore_errors=True)


async def _delete_pods(admin: AsyncClient) -> None:
    with contextlib.suppress(Exception):
        async for p in admin.list(Pod, namespace=NAMESPACE):
            assert p.metadata is not None and p.metadata.name is not None
            await admin.delete(Pod, p.metadata.name, namespace=NAMESPACE, grace_period=0)
        for _ in range(100):
            if not [p async for p in admin.list(Pod, namespace=NAMESPACE)]:
                return
            await asyncio.sleep(0.2)


def _pod(w: World, name: str, *, bound: bool) -> Pod:
    spec: dict[str, Any] = {
        "hostNetwork": True,
        "terminationGracePeriodSeconds": 1,
        "containers": [
            {
                "name": "app",
                "image": images.BUSYBOX_IMAGE,
                "imagePullPolicy": "Never",
                "command": ["/bin/sh", "-c", SLEEP],
                "volumeMounts": [{"name": "secrets", "mountPath": "/mnt/s", "readOnly": True}],
            }
        ],
        "volumes": [
            {
                "name": "secrets",
                "csi": {
                    "driver": DRIVER,
                    "readOnly": True,
                    "volumeAttributes": {"secretProviderClass": w.spc},
                    "nodePublishSecretRef": {"name": w.creds},
                },
            }
        ],
    }
    if bound:  # a pod the node ran before it restarted
        spec["nodeName"] = NODE_NAME
    else:  # an ordinary workload: tolerates the node having no CNI network, not our taint
        spec["tolerations"] = [
            {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoSchedule"}
        ]
    return Pod.from_dict(
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": NAMESPACE},
            "spec": spec,
        }
    )


async def _create(w: World, names: list[str], *, bound: bool) -> None:
    for name in names:
        await w.admin.create(_pod(w, name, bound=bound))


async def _failed_mounts(w: World, names: list[str]) -> list[str]:
    return [
        f"{e.involvedObject.name}: {e.message}"
        async for e in w.admin.list(Event, namespace=NAMESPACE)
        if e.reason == "FailedMount" and e.involvedObject.name in names
    ]


async def _events(w: World, names: list[str], reason: str) -> int:
    return sum(
        [
            e.count or 1
            async for e in w.admin.list(Event, namespace=NAMESPACE)
            if e.reason == reason and e.involvedObject.name in names
        ]
    )


async def _running_times(w: World, names: list[str], within: float) -> dict[str, float]:
    """When each pod was first seen Running (monotonic), polling every 0.2 s."""
    seen: dict[str, float] = {}
    deadline = time.monotonic() + within
    while len(seen) < len(names) and time.monotonic() < deadline:
        async for p in w.admin.list(Pod, namespace=NAMESPACE):
            assert p.metadata is not None
            name = p.metadata.name or ""
            if name in names and name not in seen and p.status and p.status.phase == "Running":
                seen[name] = time.monotonic()
        await asyncio.sleep(0.2)
    w.node.check_alive()
    missing = sorted(set(names) - set(seen))
    assert not missing, (
        f"not Running within {within}s: {missing}: {await _failed_mounts(w, missing)}"
    )
    return seen


async def _tainted(w: World) -> bool:
    node = await w.admin.get(NodeObject, NODE_NAME)
    return any(t.key == TAINT_KEY for t in (node.spec.taints if node.spec else None) or [])


async def _unscheduled(w: World, names: list[str]) -> list[str]:
    return [
        p.metadata.name or ""
        async for p in w.admin.list(Pod, namespace=NAMESPACE)
        if p.metadata is not None
        and p.metadata.name in names
        and not (p.spec is not None and p.spec.nodeName)
    ]


def _report(w: World, **figures: Any) -> None:
    w.figures.update(figures)
    load = os.getloadavg()
    print(f"\n[node-start] {figures} (load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f})")


async def _node_registered(w: World) -> None:
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        w.node.check_alive()
        with contextlib.suppress(ApiError):
            await w.admin.get(NodeObject, NODE_NAME)
            return
        await asyncio.sleep(0.2)
    raise TimeoutError(f"node not registered:\n{w.node.log('kubelet')[-4000:]}")


async def test_node_restart_with_the_startup_taint(world: World) -> None:
    w = world
    bound = [f"bound-{i}" for i in range(PODS)]
    held = [f"held-{i}" for i in range(HELD)]
    await _create(w, bound, bound=True)
    w.node.start_kubelet(f"--register-with-taints={TAINT_KEY}=true:NoSchedule")
    await _node_registered(w)
    assert await _tainted(w), "kubelet registered the node without the startup taint"
    await _create(w, held, bound=False)
    await asyncio.to_thread(w.driver.start)
    driver_serves = time.monotonic()
    w.registrar = w.node.register(w.driver)

    # The provider gap: the taint stays (the provider does not answer Version), and the
    # scheduler places none of the held pods.
    await asyncio.sleep(PROVIDER_LAG - (time.monotonic() - driver_serves))
    assert await _tainted(w), "the taint went before the provider served"
    assert sorted(await _unscheduled(w, held)) == held, "a held pod was scheduled onto the node"
    await asyncio.to_thread(w.provider.start)
    provider_serves = time.monotonic()

    taint_gone = asyncio.create_task(_until_untainted(w))
    running = await _running_times(w, bound + held, within=90)
    untainted = await taint_gone
    failed = await _failed_mounts(w, bound + held)
    not_registered = [f for f in failed if NOT_REGISTERED in f]
    others = [f for f in failed if NOT_REGISTERED not in f]
    bound_after = max(running[n] for n in bound) - provider_serves
    held_after = max(running[n] for n in held) - provider_serves
    _report(
        w,
        pods=PODS,
        held=HELD,
        failed_mount_provider=len(others),
        failed_mount_driver_not_registered=len(not_registered),
        waiting_for_provider_events=await _events(w, bound + held, "WaitingForProvider"),
        bound_all_running_after_provider_s=round(bound_after, 1),
        taint_removed_after_provider_s=round(untainted - provider_serves, 1),
        held_all_running_after_provider_s=round(held_after, 1),
    )
    assert others == [], others  # none caused by the provider's absence
    assert not [f for f in not_registered if f.split(":")[0] in held], "a held pod ran too soon"
    assert bound_after <= RUN_WITHIN, f"bound pods Running {bound_after:.1f}s after the provider"
    assert untainted > provider_serves


async def _until_untainted(w: World) -> float:
    deadline = time.monotonic() + 60
    while await _tainted(w):
        assert time.monotonic() < deadline, f"taint kept:\n{w.driver.logs()[-3000:]}"
        await asyncio.sleep(0.1)
    return time.monotonic()


async def test_provider_restarted_while_pods_are_created(world: World) -> None:
    w = world
    assert w.driver.proc is not None and w.provider.proc is not None, "the first story failed"
    errors_before = await asyncio.to_thread(w.driver.metric, "node_publish_error_total")
    names = [f"created-{i}" for i in range(CREATED)]

    async def restart() -> tuple[float, float]:
        """(seconds without a provider, when it served again)"""
        await asyncio.sleep(1.0)  # some publishes are under way
        await asyncio.to_thread(w.provider.stop)
        down = time.monotonic()
        await asyncio.sleep(RESTART_GAP)
        await asyncio.to_thread(w.provider.start)
        return time.monotonic() - down, time.monotonic()

    restarter = asyncio.create_task(restart())
    for name in names:
        await w.admin.create(_pod(w, name, bound=True))
        await asyncio.sleep(0.15)
    down_for, serves_again = await restarter
    running = await _running_times(w, names, within=90)
    failed = await _failed_mounts(w, names)
    errors = await asyncio.to_thread(w.driver.metric, "node_publish_error_total")
    _report(
        w,
        created=CREATED,
        provider_down_s=round(down_for, 1),
        failed_mount=len(failed),
        node_publish_errors=errors - errors_before,
        waiting_for_provider_events=await _events(w, names, "WaitingForProvider"),
        all_running_after_provider_back_s=round(max(running.values()) - serves_again, 1),
    )
    assert failed == [], failed
    assert errors == errors_before


async def _all_gone(w: World) -> None:
    """Every pod deleted and kubelet done unpublishing their volumes."""
    await _delete_pods(w.admin)
    pods = str(w.node.root / "pods") + "/"
    deadline = time.monotonic() + 60
    while True:
        mounts = [
            p for p in mounter.mount_points() if p.startswith(pods) and "kubernetes.io~csi" in p
        ]
        if not mounts:
            return
        assert time.monotonic() < deadline, f"volumes still mounted: {mounts}"
        await asyncio.sleep(0.2)


async def test_node_restart_with_the_go_provider(world: World) -> None:
    w = world
    go = peer("azure-provider")
    assert w.driver.proc is not None and w.provider.proc is not None, "the first story failed"
    await _all_gone(w)
    w.provider.stop()
    w.driver.stop()
    names = [f"go-{i}" for i in range(PODS)]
    theirs = upstream(go, w.provider.socket, log=w.tmp / "go-provider.log")
    try:
        await asyncio.to_thread(w.driver.start)
        driver_serves = time.monotonic()
        await _create(w, names, bound=True)  # kubelet is up: after the driver, as in story 1
        await asyncio.sleep(PROVIDER_LAG - (time.monotonic() - driver_serves))
        await asyncio.to_thread(theirs.start)
        provider_serves = time.monotonic()
        running = await _running_times(w, names, within=90)
        failed = await _failed_mounts(w, names)
        _report(
            w,
            provider="go v1.8.2",
            pods=PODS,
            failed_mount=len(failed),
            waiting_for_provider_events=await _events(w, names, "WaitingForProvider"),
            all_running_after_provider_s=round(max(running.values()) - provider_serves, 1),
        )
        assert failed == [], failed
    finally:
        theirs.stop()
