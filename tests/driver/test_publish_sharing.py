"""Concurrent first publishes that share a key share one provider call: kubelet stand-in →
this driver (real kube-apiserver) → provider_azure → the Key Vault emulator. The provider's
own Mount counter (its Prometheus metrics) says how many calls reached it."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import grpc
import httpx2 as httpx
import pytest
import yaml
from lightkube import AsyncClient
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import ServiceAccount

from csi_driver import mounter
from csi_driver.kube import SecretProviderClassPodStatus
from testbed.controlplane import ISSUER, ControlPlane
from testbed.driver import DriverProcess
from testbed.emulator import TENANT_ID, Emulator
from testbed.kubelet import Kubelet, PodVolume, rpc_error
from testbed.ports import free_port
from testbed.provider import ProviderProcess, ours

from .conftest import SpcFactory, unique

VAULT = "kv-publish-share"
WI_CLIENT = "0d000031-0000-4000-8000-0000000000f1"
OTHER_SA = "share-other"
MOUNT = '"/v1alpha1.CSIDriverProvider/Mount"'


@pytest.fixture(scope="module")
def share_world(emulator: Emulator, control_plane: ControlPlane, namespace: str) -> Emulator:
    jwks = httpx.get(
        f"{control_plane.server}/openid/v1/jwks",
        headers={"Authorization": f"Bearer {control_plane.admin_token}"},
        verify=str(control_plane.ca_file),
    ).json()
    subjects = [f"system:serviceaccount:{namespace}:{sa}" for sa in ("default", OTHER_SA)]
    emulator.seed(
        {
            "issuers": [{"issuer": ISSUER, "jwks": jwks}],
            "identities": [
                {
                    "name": "publish-share-wi",
                    "type": "application",
                    "clientId": WI_CLIENT,
                    "federatedCredentials": [
                        {"issuer": ISSUER, "subject": s, "audience": "api://AzureADTokenExchange"}
                        for s in subjects
                    ],
                }
            ],
            "vaults": [
                {
                    "name": VAULT,
                    "tenant": TENANT_ID,
                    "roleAssignments": [
                        {"identity": "publish-share-wi", "role": "Key Vault Secrets User"}
                    ],
                    "secrets": [
                        {"name": "share-a", "value": "value-a"},
                        {"name": "share-b", "value": "value-b"},
                    ],
                }
            ],
        }
    )
    return emulator


@pytest.fixture(scope="module")
def share_provider(root: Path, share_world: Emulator) -> Iterator[tuple[ProviderProcess, int]]:
    d = root / "share-providers"
    d.mkdir(exist_ok=True)
    (root / "share-providers-extra").mkdir(exist_ok=True)
    port = free_port()
    p = ours(d / "azure.sock", prometheus_port=port, log=root / "share-provider.log")
    p.start()
    yield p, port
    p.stop()


DriverFactory = Callable[..., DriverProcess]


@pytest.fixture
def start_driver(
    root: Path, driver_kubeconfig: Path, share_provider: tuple[ProviderProcess, int]
) -> Iterator[DriverFactory]:
    started: list[DriverProcess] = []

    def start(*flags: str) -> DriverProcess:
        d = DriverProcess(
            root,
            kubeconfig=driver_kubeconfig,
            provider_dirs=(root / "share-providers", root / "share-providers-extra"),
            name=unique("share-driver"),
            extra=flags,
        )
        d.start()
        started.append(d)
        return d

    yield start
    for d in started:
        d.stop()


@pytest.fixture
async def pods(
    admin_client: AsyncClient, root: Path, namespace: str
) -> AsyncIterator[Callable[..., Awaitable[list[PodVolume]]]]:
    """`make(driver, spc, n, service_account=…)`: n pods' volumes, ready to publish."""
    made: list[tuple[Kubelet, PodVolume]] = []

    async def make(driver: DriverProcess, spc: str, n: int, sa: str = "default") -> list[PodVolume]:
        kubelet = Kubelet(admin_client, root / "kubelet-share", str(driver.socket))
        created = [
            await kubelet.create_pod(namespace, unique("share"), spc, service_account=sa)
            for _ in range(n)
        ]
        vols = [await kubelet.volume(p) for p in created]
        made.extend((kubelet, v) for v in vols)
        return vols

    yield make
    for kubelet, v in made:
        with contextlib.suppress(grpc.RpcError):
            await kubelet.unpublish(v)
        await kubelet.delete_pod(v.pod)
    for kubelet in {id(k): k for k, _ in made}.values():
        await kubelet.close()


def provider_mounts(port: int) -> int:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    return int(
        sum(
            float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("grpc_request_count{") and f"grpc_method={MOUNT}" in line
        )
    )


async def wi_spc(make_spc: SpcFactory, *names: str) -> str:
    items = [yaml.safe_dump({"objectName": n, "objectType": "secret"}) for n in names]
    return await make_spc(
        {
            "keyvaultName": VAULT,
            "tenantId": TENANT_ID,
            "clientID": WI_CLIENT,
            "objects": yaml.safe_dump({"array": items}),
        },
        provider="azure",
    )


async def publish_all(
    client: AsyncClient, driver: DriverProcess, vols: list[PodVolume]
) -> list[BaseException | None]:
    """Every publish at once, as kubelet's pod workers send them after a node restart."""
    kubelet = Kubelet(client, Path("/nonexistent"), str(driver.socket))

    async def one(v: PodVolume) -> BaseException | None:
        try:
            await kubelet.publish(v)
            return None
        except grpc.RpcError as e:
            error: BaseException = e
            return error

    try:
        return await asyncio.gather(*(one(v) for v in vols))
    finally:
        await kubelet.close()


def slow_first_get(world: Emulator, name: str) -> None:
    """The first GET of `name` takes 1.5 s, so every publish sent at once overlaps the call."""
    world.add_fault(service="kv", method="GET", path=f"/secrets/{name}", delay_ms=1500, count=1)


@pytest.mark.parametrize("share", [True, False])
async def test_concurrent_publishes_of_one_spc_share_one_provider_call(
    share: bool,
    share_world: Emulator,
    share_provider: tuple[ProviderProcess, int],
    start_driver: DriverFactory,
    make_spc: SpcFactory,
    pods: Callable[..., Awaitable[list[PodVolume]]],
    admin_client: AsyncClient,
) -> None:
    _, port = share_provider
    driver = start_driver(f"--publish-share-provider-calls={str(share).lower()}")
    spc = await wi_spc(make_spc, "share-a", "share-b")
    vols = await pods(driver, spc, 20)
    slow_first_get(share_world, "share-a")
    before = provider_mounts(port)
    assert await publish_all(admin_client, driver, vols) == [None] * 20
    calls = provider_mounts(port) - before
    assert calls == (1 if share else 20)
    for v in vols:
        assert (v.target / "share-a").read_text() == "value-a"
        assert (v.target / "share-b").read_text() == "value-b"
        assert str(v.target) in mounter.mount_points()  # each its own tmpfs
    saved = driver.metric("node_publish_provider_calls_saved_total")
    assert saved == (19 if share else 0)
    assert driver.metric("node_publish_total") == 20


async def test_different_identities_do_not_share(
    share_world: Emulator,
    share_provider: tuple[ProviderProcess, int],
    start_driver: DriverFactory,
    make_spc: SpcFactory,
    pods: Callable[..., Awaitable[list[PodVolume]]],
    admin_client: AsyncClient,
    namespace: str,
) -> None:
    _, port = share_provider
    if not [
        sa
        async for sa in admin_client.list(ServiceAccount, namespace=namespace)
        if sa.metadata is not None and sa.metadata.name == OTHER_SA
    ]:
        await admin_client.create(
            ServiceAccount(metadata=ObjectMeta(name=OTHER_SA, namespace=namespace))
        )
    driver = start_driver()
    spc = await wi_spc(make_spc, "share-a")
    vols = await pods(driver, spc, 5) + await pods(driver, spc, 5, OTHER_SA)
    slow_first_get(share_world, "share-a")
    before = provider_mounts(port)
    assert await publish_all(admin_client, driver, vols) == [None] * 10
    assert provider_mounts(port) - before == 2  # one per service account
    assert all((v.target / "share-a").read_text() == "value-a" for v in vols)


async def test_a_failing_shared_call_fails_every_publish_alike_and_writes_nothing(
    share_world: Emulator,
    share_provider: tuple[ProviderProcess, int],
    start_driver: DriverFactory,
    make_spc: SpcFactory,
    pods: Callable[..., Awaitable[list[PodVolume]]],
    admin_client: AsyncClient,
    namespace: str,
) -> None:
    _, port = share_provider
    driver = start_driver()
    spc = await wi_spc(make_spc, "share-a", "share-missing")
    vols = await pods(driver, spc, 8)
    slow_first_get(share_world, "share-missing")
    before = provider_mounts(port)
    errors = await publish_all(admin_client, driver, vols)
    assert provider_mounts(port) - before == 1
    details = set()
    for v, e in zip(vols, errors, strict=True):
        assert v.pod.metadata is not None and e is not None
        code, message = rpc_error(e)
        assert code == grpc.StatusCode.UNKNOWN
        prefix = f"failed to mount secrets store objects for pod {namespace}/{v.pod.metadata.name}"
        assert message.startswith(prefix + ", err: rpc error: ")
        details.add(message.removeprefix(prefix))
        assert "share-missing" in message
        assert str(v.target) not in mounter.mount_points()  # rolled back
        assert not v.target.exists() or not any(v.target.iterdir())
        spcps = [
            s
            async for s in admin_client.list(SecretProviderClassPodStatus, namespace=namespace)
            if s.metadata is not None
            and (s.metadata.name or "").startswith(f"{v.pod.metadata.name}-")
        ]
        assert spcps == []
    assert len(details) == 1  # the same precise error for each
    assert driver.metric("node_publish_error_total") == 8
