"""Rotation against the real pieces: kube-apiserver, this driver (its own ServiceAccount),
provider_azure, the Key Vault emulator. Each test starts its own driver with a short
`--rotation-poll-interval`, so the reconciler ticks within the test."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import grpc
import grpc.aio
import httpx2 as httpx
import pytest
import yaml
from lightkube import AsyncClient
from lightkube.codecs import from_dict
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Event, Pod, Secret
from lightkube.resources.rbac_authorization_v1 import ClusterRoleBinding

from csi_driver.kube import SecretProviderClass, SecretProviderClassPodStatus
from csi_driver.plans import FORCE_ANNOTATION
from testbed.controlplane import ISSUER, ControlPlane, manifests
from testbed.driver import DriverProcess
from testbed.emulator import TENANT_ID, Emulator
from testbed.kubelet import Kubelet, PodVolume
from testbed.provider import ProviderProcess, ours

from .conftest import SpcFactory, unique

VAULT = "kv-rotation"
WI_CLIENT = "0d000011-0000-4000-8000-0000000000e1"
SP_CLIENT, SP_SECRET = "0d000012-0000-4000-8000-0000000000e2", "rotation-sp-secret"
OFFICER = "0d000013-0000-4000-8000-0000000000e3"
INTERVAL = 1.0


def objects(*names: str) -> str:
    return yaml.safe_dump(
        {"array": [yaml.safe_dump({"objectName": n, "objectType": "secret"}) for n in names]}
    )


async def wait_for(pred: Callable[[], Any], within: float, what: str) -> Any:
    deadline = time.monotonic() + within
    while True:
        value = pred()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"not within {within}s: {what}")
        await asyncio.sleep(0.05)


@pytest.fixture(scope="module")
def vault_hosts() -> Iterator[None]:
    if os.environ.get("NETNS_RUN_INSIDE") != "1":
        pytest.fail("run inside tests/netns-run")
    hosts = Path("/etc/hosts")
    before = hosts.read_text()
    hosts.write_text(before + f"127.0.0.1 {VAULT}.vault.azure.net\n")
    yield
    hosts.write_text(before)


@pytest.fixture(scope="module")
def world(
    emulator: Emulator, control_plane: ControlPlane, namespace: str, vault_hosts: None
) -> Emulator:
    jwks = control_plane.jwks()
    emulator.seed(
        {
            "issuers": [{"issuer": ISSUER, "jwks": jwks}],
            "identities": [
                {
                    "name": "rotation-wi",
                    "type": "application",
                    "clientId": WI_CLIENT,
                    "federatedCredentials": [
                        {
                            "issuer": ISSUER,
                            "subject": f"system:serviceaccount:{namespace}:default",
                            "audience": "api://AzureADTokenExchange",
                        }
                    ],
                },
                {
                    "name": "rotation-sp",
                    "type": "servicePrincipal",
                    "clientId": SP_CLIENT,
                    "clientSecret": SP_SECRET,
                },
                {"name": "rotation-officer", "type": "application", "clientId": OFFICER},
            ],
            "vaults": [
                {
                    "name": VAULT,
                    "tenant": TENANT_ID,
                    "roleAssignments": [
                        {"identity": "rotation-wi", "role": "Key Vault Secrets User"},
                        {"identity": "rotation-sp", "role": "Key Vault Secrets User"},
                        {"identity": "rotation-officer", "role": "Key Vault Secrets Officer"},
                    ],
                    "secrets": [],
                }
            ],
        }
    )
    return emulator


@pytest.fixture(scope="module")
def provider(root: Path, world: Emulator) -> Iterator[ProviderProcess]:
    d = root / "rotation-providers"
    d.mkdir(exist_ok=True)
    (root / "rotation-providers-extra").mkdir(exist_ok=True)
    sock = d / "azure.sock"
    p = ours(sock, log=root / "rotation-provider.log")
    p.start()
    yield p
    p.stop()
    shutil.copy(p.log, "/tmp/rotation-provider.log")  # for a look after a failed run


DriverFactory = Callable[..., DriverProcess]
# The rotation drivers' node: their reconcilers see only these tests' mounts, never the pods
# other driver tests left on node-1.
ROTATION_NODE = "node-rotation"


@pytest.fixture
def start_driver(
    root: Path, driver_kubeconfig: Path, provider: ProviderProcess
) -> Iterator[DriverFactory]:
    started: list[DriverProcess] = []

    def start(*flags: str, interval: float = INTERVAL, name: str | None = None) -> DriverProcess:
        d = DriverProcess(
            root,
            kubeconfig=driver_kubeconfig,
            provider_dirs=(root / "rotation-providers", root / "rotation-providers-extra"),
            name=name or unique("rot-driver"),
            node_id=ROTATION_NODE,
            extra=(
                "--enable-secret-rotation=true",
                f"--rotation-poll-interval={int(interval * 1000)}ms",
                *flags,
            ),
        )
        d.start()
        started.append(d)
        return d

    yield start
    for d in started:
        if d.proc is not None:
            d.stop()


class Node:
    """One test's pods on one driver; unpublishes and deletes them afterwards."""

    def __init__(self, client: AsyncClient, root: Path, driver: DriverProcess, ns: str) -> None:
        self.client = client
        self.ns = ns
        self.kubelet = Kubelet(
            client, root / "kubelet-rotation", str(driver.socket), node_name=ROTATION_NODE
        )
        self.volumes: list[PodVolume] = []

    def use(self, driver: DriverProcess) -> None:
        self.kubelet = Kubelet(
            self.client, self.kubelet.root, str(driver.socket), node_name=ROTATION_NODE
        )

    async def pod(self, spc: str, **kw: Any) -> PodVolume:
        pod = await self.kubelet.create_pod(self.ns, unique("rot"), spc, **kw)
        vol = await self.kubelet.volume(pod)
        await self.kubelet.publish(vol)
        self.volumes.append(vol)
        return vol

    async def close(self) -> None:
        for v in self.volumes:
            with contextlib.suppress(Exception):
                await self.kubelet.unpublish_as_kubelet(v)
            with contextlib.suppress(Exception):
                await self.kubelet.delete_pod(v.pod)
        await self.kubelet.close()


@pytest.fixture
async def make_node(
    admin_client: AsyncClient, root: Path, namespace: str
) -> AsyncIterator[Callable[[DriverProcess], Node]]:
    nodes: list[Node] = []

    def make(driver: DriverProcess) -> Node:
        n = Node(admin_client, root, driver, namespace)
        nodes.append(n)
        return n

    yield make
    for n in nodes:
        await n.close()


async def spcps_versions(client: AsyncClient, vol: PodVolume, spc: str) -> dict[str, str]:
    assert vol.pod.metadata is not None
    obj = await client.get(
        SecretProviderClassPodStatus,
        f"{vol.pod.metadata.name}-{vol.pod.metadata.namespace}-{spc}",
        namespace=vol.pod.metadata.namespace,
    )
    return {o["id"]: o["version"] for o in obj.to_dict()["status"]["objects"]}


async def events(client: AsyncClient, vol: PodVolume, reason: str) -> list[Event]:
    assert vol.pod.metadata is not None
    return [
        e
        async for e in client.list(
            Event,
            namespace=vol.pod.metadata.namespace,
            fields={"involvedObject.name": vol.pod.metadata.name or "", "reason": reason},
        )
    ]


async def wi_spc(make_spc: SpcFactory, *names: str) -> str:
    return await make_spc(
        {
            "keyvaultName": VAULT,
            "tenantId": TENANT_ID,
            "clientID": WI_CLIENT,
            "objects": objects(*names),
        },
        provider="azure",
    )


def kv_gets(emulator: Emulator, name: str | None = None) -> int:
    return sum(
        1
        for r in emulator.requests(service="kv", vault=VAULT, method="GET")
        if name is None or f"/secrets/{name}" in r["path"]
    )


# ---- proof ---------------------------------------------------------------------------------


async def test_new_value_reaches_file_and_spcps_within_an_interval(
    world: Emulator,
    admin_client: AsyncClient,
    one_pod: OnePodFactory,
) -> None:
    driver, _node, vol, name, spc = await one_pod("rot-proof", "old-" + "x" * 4000)
    path = vol.target / name
    old = path.read_text()
    assert old.startswith("old-")
    v0 = await spcps_versions(admin_client, vol, spc)

    seen: set[str] = set()
    bad: list[str] = []
    stop = threading.Event()

    def reader() -> None:
        while not stop.is_set():
            try:
                text = path.read_text()
            except OSError as e:  # the file must never be missing either
                bad.append(f"{type(e).__name__}")
                continue
            if text not in (old, "new-" + "y" * 4000):
                bad.append(text[:20])
            seen.add(text[:4])

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    try:
        version = world.set_secret(VAULT, name, "new-" + "y" * 4000)
        changed_at = time.monotonic()
        await wait_for(lambda: path.read_text().startswith("new-"), 3 * INTERVAL, "new value")
        took = time.monotonic() - changed_at
        # the reader thread may not have been scheduled since the swap (GIL, loaded machine)
        await wait_for(lambda: "new-" in seen, 10, "reader thread sees the new value")
    finally:
        stop.set()
        t.join()
    assert not bad, bad[:5]
    assert seen == {"old-", "new-"}
    print(f"new value visible after {took:.2f}s (interval {INTERVAL}s)")
    v1 = await wait_for(
        lambda: _changed(admin_client, vol, spc, v0), 2 * INTERVAL, "SPCPS versions"
    )
    assert v1[f"secret/{name}"] == version
    await wait_for(lambda: events(admin_client, vol, "MountRotationComplete"), 2, "Normal event")
    assert driver.metric("rotation_reconcile_total", rotated="true") >= 1
    assert driver.metric("rotation_reconcile_duration_sec_count") >= 1
    assert "new-yyyy" not in driver.logs()


async def _changed(
    client: AsyncClient, vol: PodVolume, spc: str, before: dict[str, str]
) -> dict[str, str] | None:
    now = await spcps_versions(client, vol, spc)
    return now if now != before else None


async def test_unchanged_values_are_not_rotations(
    one_pod: OnePodFactory,
) -> None:
    driver, _node, vol, _name, _spc = await one_pod("rot-steady", "steady")
    target = vol.target / "..data"
    before = os.readlink(target)
    await wait_for(
        lambda: driver.metric("rotation_reconcile_total", rotated="false") >= 2,
        4 * INTERVAL,
        "two quiet reconciles",
    )
    assert driver.metric("rotation_reconcile_total", rotated="true") == 0
    assert os.readlink(target) == before  # nothing rewritten


# ---- sharing: Key Vault calls per tick -------------------------------------------------------


async def _gets_per_tick(
    world: Emulator, driver: DriverProcess, pods: int, ticks: int = 2
) -> float:
    """KV GETs per tick on VAULT, counted from the emulator's request log between metric
    boundaries (every tick reconciles each pod once)."""
    base = driver.metric("rotation_reconcile_total")
    await wait_for(
        lambda: driver.metric("rotation_reconcile_total") >= base + pods, 4 * INTERVAL, "tick"
    )
    start = driver.metric("rotation_reconcile_total")
    world.clear_requests()
    await wait_for(
        lambda: driver.metric("rotation_reconcile_total") >= start + ticks * pods,
        (ticks + 3) * INTERVAL,
        "ticks",
    )
    done = driver.metric("rotation_reconcile_total")
    return kv_gets(world) / ((done - start) / pods)


@pytest.mark.parametrize("share", [True, False])
async def test_pods_sharing_identity_share_one_call(
    share: bool,
    world: Emulator,
    start_driver: DriverFactory,
    make_node: Callable[[DriverProcess], Node],
    make_spc: SpcFactory,
) -> None:
    names = [unique("rot-share") for _ in range(2)]
    for n in names:
        world.set_secret(VAULT, n, "v")
    spc = await wi_spc(make_spc, *names)
    driver = start_driver(f"--rotation-share-provider-calls={str(share).lower()}")
    node = make_node(driver)
    pods = 4
    for _ in range(pods):
        await node.pod(spc)
    per_tick = await _gets_per_tick(world, driver, pods)
    saved = driver.metric("rotation_provider_calls_saved_total")
    print(f"share={share}: {pods} pods x {len(names)} objects: {per_tick:.1f} KV GETs per tick")
    if share:
        assert per_tick == len(names)
        assert saved >= pods - 1
    else:  # one provider call per pod; the provider may still coalesce concurrent fetches
        assert len(names) < per_tick <= pods * len(names)
        assert saved == 0
    ticks = re.findall(r"rotation tick: (\d+) mounts due, (\d+) provider calls", driver.logs())
    assert ticks and all(int(c) == (1 if share else int(m)) for m, c in ticks[1:] if int(m))


TICK_LINE = re.compile(r"rotation tick: (\d+) mounts due, (\d+) provider calls")


async def _next_tick(driver: DriverProcess, seen: int, within: float) -> tuple[int, int]:
    """Waits for a tick line after the first `seen` that looked at mounts: (its index, calls)."""

    def found() -> tuple[int, int] | None:
        lines = TICK_LINE.findall(driver.logs())
        for i in range(seen, len(lines)):
            if int(lines[i][0]):
                return i + 1, int(lines[i][1])
        return None

    result: tuple[int, int] = await wait_for(found, within, "a rotation tick")
    return result


async def _republish(node: Node, vol: PodVolume) -> None:
    """As kubelet: ABORTED (the tick is swapping this volume's files) is retried next sync."""
    try:
        await node.kubelet.publish(vol)
    except grpc.aio.AioRpcError as e:
        if e.code() != grpc.StatusCode.ABORTED:
            raise


async def test_due_republishes_and_the_tick_share_one_call_an_interval(
    world: Emulator,
    start_driver: DriverFactory,
    make_node: Callable[[DriverProcess], Node],
    make_spc: SpcFactory,
) -> None:
    """Kubelet republishes every pod at once, again and again, from just before the interval
    has passed until the tick, so they come before or after the tick (its clock has ±10 %
    jitter): either way the group gets one Key Vault GET per object and interval, and every
    pod the new value."""
    interval, pods = 4.0, 6
    name = unique("rot-repub-share")
    world.set_secret(VAULT, name, "v0")
    spc = await wi_spc(make_spc, name)
    driver = start_driver(interval=interval)
    node = make_node(driver)
    vols = [await node.pod(spc) for _ in range(pods)]
    for v in vols:
        await node.kubelet.publish(v)  # kubelet's first republish starts each volume's clock
    seen, _ = await _next_tick(driver, 0, 3 * interval)
    orders = []
    for round_ in range(4):
        value = f"v{round_ + 1}"
        world.set_secret(VAULT, name, value)
        world.clear_requests()
        await asyncio.sleep(0.85 * interval)
        tick = asyncio.ensure_future(_next_tick(driver, seen, 3 * interval))
        while not tick.done():
            await asyncio.gather(*(_republish(node, v) for v in vols))
            await asyncio.sleep(0.05)
        seen, tick_calls = await tick
        assert kv_gets(world, name) == 1, f"round {round_}"
        for v in vols:
            path = v.target / name
            await wait_for(lambda p=path, x=value: p.read_text() == x, 2, "new value")
        orders.append("republishes first" if tick_calls == 0 else "tick first")
    print(f"{pods} pods, 4 intervals: 1 Key Vault GET each; orders: {orders}")
    assert driver.metric("rotation_provider_calls_saved_total") >= 4 * (pods - 1)
    for v in vols:  # while the driver still ticks: Aborted (a tick swapping files) is retried
        await wait_for(lambda v=v: _unpublished(node, v), 5, "unpublished")


async def _unpublished(node: Node, vol: PodVolume) -> bool:
    try:
        await node.kubelet.unpublish(vol)
        return True
    except grpc.aio.AioRpcError as e:
        if e.code() != grpc.StatusCode.ABORTED:
            raise
        return False


# ---- republish and the force annotation --------------------------------------------------------


async def test_republish_is_throttled_and_never_remounts(
    world: Emulator,
    one_pod: OnePodFactory,
) -> None:
    _driver, node, vol, name, _spc = await one_pod("rot-repub", "one", interval=30)
    world.clear_requests()
    world.set_secret(VAULT, name, "two")
    for _ in range(3):  # kubelet's periodic republish, well inside one interval
        await node.kubelet.publish(vol)
    assert kv_gets(world, name) == 0
    assert (vol.target / name).read_text() == "one"


async def test_force_annotation_refreshes_at_next_tick(
    admin_client: AsyncClient,
    one_pod: OnePodFactory,
) -> None:
    driver, _node, vol, _name, _spc = await one_pod("rot-force", "same")
    assert vol.pod.metadata is not None
    await admin_client.patch(
        Pod,
        vol.pod.metadata.name or "",
        {"metadata": {"annotations": {FORCE_ANNOTATION: "2026-11-23T21:00:00Z"}}},
        namespace=vol.pod.metadata.namespace,
    )
    await wait_for(
        lambda: events(admin_client, vol, "MountRotationComplete"), 4 * INTERVAL, "forced"
    )
    assert "(forced)" in driver.logs()


# ---- faults: each keeps the content, is visible, and recovers ---------------------------------


async def _fault_row(
    world: Emulator,
    driver: DriverProcess,
    vol: PodVolume,
    name: str,
    admin_client: AsyncClient,
    error_type: str,
    heal: Callable[[], Awaitable[None] | None],
    new_value: str | None = "after",
) -> None:
    path = vol.target / name
    before = path.read_text()
    if new_value is not None:
        world.set_secret(VAULT, name, new_value)
    await wait_for(
        lambda: driver.metric("rotation_reconcile_error_total", error_type=error_type) >= 1,
        15,
        f"error {error_type}",
    )
    assert path.read_text() == before  # previous content kept, never emptied
    await wait_for(lambda: events(admin_client, vol, "MountRotationFailed"), 3, "Warning event")
    result = heal()
    if result is not None:
        await result
    if new_value is not None:
        await wait_for(lambda: path.read_text() == new_value, 10, "recovery")


class OnePod(NamedTuple):
    driver: DriverProcess
    node: Node
    vol: PodVolume
    name: str
    spc: str


OnePodFactory = Callable[..., Awaitable[OnePod]]


@pytest.fixture
def one_pod(
    world: Emulator,
    start_driver: DriverFactory,
    make_node: Callable[[DriverProcess], Node],
    make_spc: SpcFactory,
) -> OnePodFactory:
    """One pod mounting one fresh workload-identity secret through a new driver."""

    async def make(prefix: str, value: str, *flags: str, **driver_kw: Any) -> OnePod:
        name = unique(prefix)
        world.set_secret(VAULT, name, value)
        spc = await wi_spc(make_spc, name)
        driver = start_driver(*flags, **driver_kw)
        node = make_node(driver)
        return OnePod(driver, node, await node.pod(spc), name, spc)

    return make


@pytest.fixture
async def wi_pod(one_pod: OnePodFactory) -> tuple[DriverProcess, PodVolume, str, str]:
    driver, _, vol, name, spc = await one_pod("rot-fault", "before")
    return driver, vol, name, spc


async def test_fault_provider_down(
    world: Emulator,
    provider: ProviderProcess,
    wi_pod: tuple[DriverProcess, PodVolume, str, str],
    admin_client: AsyncClient,
) -> None:
    driver, vol, name, _ = wi_pod
    provider.kill()
    try:
        await _fault_row(
            world, driver, vol, name, admin_client, "GRPCProviderError", provider.start
        )
    finally:
        if provider.proc is None:
            provider.start()


async def test_fault_provider_restarted_during_a_tick(
    world: Emulator,
    provider: ProviderProcess,
    one_pod: OnePodFactory,
    admin_client: AsyncClient,
) -> None:
    """Issue 14's row: the provider SIGKILLed while a tick's Mount is in flight (Key Vault
    holds that tick's GET 3 s), back 4 s later (longer than gRPC's own retries, which absorb a
    shorter gap within the tick): the tick fails and keeps the previous content (never
    emptied, never half written), and the next tick after the restart brings the new value."""
    driver, _, vol, name, _ = await one_pod("rot-restart", "before")
    path = vol.target / name
    held = world.add_fault(
        service="kv", method="GET", path=f"/secrets/{name}", delay_ms=3000, count=1
    )
    world.set_secret(VAULT, name, "after")
    seen: set[str] = set()
    watching = True

    async def watch() -> None:
        while watching:
            seen.add(path.read_text() if path.exists() else "<missing>")
            await asyncio.sleep(0.01)

    watcher = asyncio.create_task(watch())
    try:

        def in_flight() -> bool:
            return any(f["id"] == held["id"] and f["hits"] >= 1 for f in world.faults())

        await wait_for(in_flight, 10, "a tick's Key Vault GET under way")
        provider.kill()
        await wait_for(
            lambda: driver.metric("rotation_reconcile_error_total", error_type="GRPCProviderError"),
            4.0,
            "the tick failed",
        )
        await asyncio.sleep(0.5)
        assert path.read_text() == "before"
        await asyncio.to_thread(provider.start)
        await wait_for(lambda: path.read_text() == "after", 10, "the next tick's new value")
    finally:
        watching = False
        await watcher
        if provider.proc is None:
            provider.start()
    assert seen <= {"before", "after"}, seen  # sampled every 10 ms: never missing, never else
    await wait_for(lambda: events(admin_client, vol, "MountRotationFailed"), 3, "Warning event")
    await wait_for(lambda: events(admin_client, vol, "MountRotationComplete"), 3, "Normal event")


@pytest.mark.parametrize("status", [429, 503])
async def test_fault_key_vault_throttled_or_failing(
    status: int,
    world: Emulator,
    admin_client: AsyncClient,
    one_pod: OnePodFactory,
) -> None:
    """The provider's SDK retries a persistent 429/503 for ~14 s and the driver retries an
    Unavailable provider; a short --provider-timeout makes the driver give up (and keep the
    content) within the test's time."""
    driver, _, vol, name, _ = await one_pod("rot-fault", "before", "--provider-timeout=2s")
    world.add_fault(
        service="kv", vault=VAULT, path=f"/secrets/{name}", status=status, retry_after=0
    )
    try:
        await _fault_row(
            world, driver, vol, name, admin_client, "GRPCProviderError", world.clear_faults
        )
    finally:
        world.clear_faults()


async def test_fault_token_request_forbidden(
    world: Emulator,
    wi_pod: tuple[DriverProcess, PodVolume, str, str],
    admin_client: AsyncClient,
) -> None:
    driver, vol, name, _ = wi_pod
    binding = "secretprovidertokenrequest-rolebinding"
    await admin_client.delete(ClusterRoleBinding, binding)

    async def heal() -> None:
        docs = [d for d in manifests("rbac.yaml") if d["metadata"]["name"] == binding]
        await admin_client.apply(from_dict(docs[0]), field_manager="tests", force=True)

    try:
        await _fault_row(
            world, driver, vol, name, admin_client, "ServiceAccountTokenRequestFailed", heal
        )
        assert driver.logs().count("Forbidden") + driver.logs().count("forbidden") >= 1
    finally:
        await heal()


async def test_fault_spc_deleted_then_edited(
    world: Emulator,
    wi_pod: tuple[DriverProcess, PodVolume, str, str],
    admin_client: AsyncClient,
    make_spc: SpcFactory,
    namespace: str,
) -> None:
    driver, vol, name, spc = wi_pod
    await admin_client.delete(SecretProviderClass, spc, namespace=namespace)
    extra = unique("rot-extra")
    world.set_secret(VAULT, extra, "extra-value")

    async def heal() -> None:  # recreate it, edited: one more object
        await make_spc(
            {
                "keyvaultName": VAULT,
                "tenantId": TENANT_ID,
                "clientID": WI_CLIENT,
                "objects": objects(name, extra),
            },
            provider="azure",
            name=spc,
        )

    await _fault_row(world, driver, vol, name, admin_client, "SecretProviderClassNotFound", heal)
    await wait_for(lambda: (vol.target / extra).exists(), 5, "edited SPC's new object")
    assert (vol.target / extra).read_text() == "extra-value"
    versions = await wait_for(
        lambda: _has(admin_client, vol, spc, f"secret/{extra}"), 5, "SPCPS lists new object"
    )
    assert set(versions) == {f"secret/{name}", f"secret/{extra}"}


async def _has(client: AsyncClient, vol: PodVolume, spc: str, oid: str) -> dict[str, str] | None:
    v = await spcps_versions(client, vol, spc)
    return v if oid in v else None


async def test_fault_node_publish_secret_deleted(
    world: Emulator,
    start_driver: DriverFactory,
    make_node: Callable[[DriverProcess], Node],
    make_spc: SpcFactory,
    admin_client: AsyncClient,
    namespace: str,
) -> None:
    import base64

    name = unique("rot-sp")
    world.set_secret(VAULT, name, "before")
    creds = unique("rot-creds")
    data = {
        "clientid": base64.b64encode(SP_CLIENT.encode()).decode(),
        "clientsecret": base64.b64encode(SP_SECRET.encode()).decode(),
    }
    await admin_client.create(
        Secret(metadata=ObjectMeta(name=creds, namespace=namespace), data=data)
    )
    spc = await make_spc(
        {"keyvaultName": VAULT, "tenantId": TENANT_ID, "objects": objects(name)},
        provider="azure",
    )
    driver = start_driver()
    node = make_node(driver)
    vol = await node.pod(spc, secret_ref=creds)
    await admin_client.delete(Secret, creds, namespace=namespace)

    async def heal() -> None:
        await admin_client.create(
            Secret(metadata=ObjectMeta(name=creds, namespace=namespace), data=data)
        )

    await _fault_row(world, driver, vol, name, admin_client, "NodePublishSecretRefNotFound", heal)
    assert SP_SECRET not in driver.logs()


async def test_fault_object_deleted_from_key_vault(
    world: Emulator,
    wi_pod: tuple[DriverProcess, PodVolume, str, str],
    admin_client: AsyncClient,
) -> None:
    driver, vol, name, _ = wi_pod
    token = world.token(OFFICER)
    r = httpx.delete(
        f"https://{VAULT}.vault.azure.net/secrets/{name}?api-version=7.4",
        headers={"Authorization": f"Bearer {token}"},
        verify=os.environ["SSL_CERT_FILE"],
    )
    assert r.status_code == 200, r.text
    await _fault_row(
        world, driver, vol, name, admin_client, "GRPCProviderError", lambda: None, new_value=None
    )
    assert (vol.target / name).read_text() == "before"


async def test_driver_restarted_between_ticks(
    world: Emulator,
    start_driver: DriverFactory,
    one_pod: OnePodFactory,
) -> None:
    driver_name = unique("rot-driver")
    driver, node, vol, name, _spc = await one_pod("rot-restart", "before", name=driver_name)
    driver.stop()
    world.set_secret(VAULT, name, "after-restart")
    await asyncio.sleep(INTERVAL * 1.5)
    assert (vol.target / name).read_text() == "before"
    again = start_driver(name=driver_name)
    node.use(again)
    await wait_for(
        lambda: (vol.target / name).read_text() == "after-restart", 3 * INTERVAL, "rotation"
    )
    assert re.search(r"recovered [1-9][0-9]* existing mounts", again.logs()), again.logs()


async def test_synced_secret_follows_rotation(
    world: Emulator,
    start_driver: DriverFactory,
    make_node: Callable[[DriverProcess], Node],
    admin_client: AsyncClient,
    namespace: str,
) -> None:
    name, secret_name, spc = unique("rot-sync"), unique("rot-synced"), unique("spc")
    world.set_secret(VAULT, name, "sync-before")
    body = {
        "apiVersion": "secrets-store.csi.x-k8s.io/v1",
        "kind": "SecretProviderClass",
        "metadata": {"name": spc, "namespace": namespace},
        "spec": {
            "provider": "azure",
            "parameters": {
                "keyvaultName": VAULT,
                "tenantId": TENANT_ID,
                "clientID": WI_CLIENT,
                "objects": objects(name),
            },
            "secretObjects": [
                {
                    "secretName": secret_name,
                    "type": "Opaque",
                    "data": [{"objectName": name, "key": "value"}],
                }
            ],
        },
    }
    await admin_client.create(SecretProviderClass.from_dict(body))
    driver = start_driver()
    node = make_node(driver)
    vol = await node.pod(spc)

    async def synced() -> str:
        try:
            s = await admin_client.get(Secret, secret_name, namespace=namespace)
        except Exception:
            return ""
        import base64

        return base64.b64decode((s.data or {}).get("value", "")).decode()

    await wait_for(lambda: _eq(synced(), "sync-before"), 5, "synced Secret")
    world.set_secret(VAULT, name, "sync-after")
    await wait_for(lambda: (vol.target / name).read_text() == "sync-after", 3 * INTERVAL, "file")
    await wait_for(lambda: _eq(synced(), "sync-after"), 2 * INTERVAL, "synced Secret rotated")


async def _eq(value: Awaitable[str], expected: str) -> bool:
    return await value == expected


async def test_gone_pod_is_skipped_quietly(
    admin_client: AsyncClient,
    one_pod: OnePodFactory,
) -> None:
    driver, node, vol, _name, _spc = await one_pod("rot-gone", "v")
    await wait_for(lambda: driver.metric("rotation_reconcile_total") >= 1, 3 * INTERVAL, "tick")
    await node.kubelet.delete_pod(vol.pod)  # kubelet has not unpublished yet
    ticks = len(re.findall("rotation tick:", driver.logs()))
    await wait_for(
        lambda: len(re.findall("rotation tick:", driver.logs())) >= ticks + 2,
        4 * INTERVAL,
        "two more ticks",
    )
    assert driver.metric("rotation_reconcile_error_total") == 0
    assert not await events(admin_client, vol, "MountRotationFailed")
    assert "rotation failed" not in driver.logs()


@pytest.fixture(autouse=True)
def _no_mount_left(root: Path) -> Iterator[None]:
    yield
    from csi_driver import mounter

    left = [p for p in mounter.mount_points() if p.startswith(str(root / "kubelet-rotation"))]
    for p in left:
        mounter.unmount(p)
    assert not left, f"mounts left behind: {left}"
