"""Concurrent first publishes that share a key share one provider call: kubelet stand-in →
this driver (real kube-apiserver) → provider_azure → the Key Vault emulator. The provider's
own Mount counter (its Prometheus metrics) says how many calls reached it."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
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
from testbed.provider import ProviderProcess, mount_calls, ours

from .conftest import SpcFactory, unique

VAULT = "kv-publish-share"
WI_CLIENT = "0d000031-0000-4000-8000-0000000000f1"
OTHER_SA = "share-other"


@pytest.fixture(scope="module")
def share_world(emulator: Emulator, control_plane: ControlPlane, namespace: str) -> Emulator:
    jwks = control_plane.jwks()
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


@dataclass
class Share:
    """One test's pieces: the emulator, the provider's metrics port, drivers, SPCs, pods."""

    world: Emulator
    port: int
    client: AsyncClient
    start_driver: DriverFactory
    make_spc: SpcFactory
    pods: Callable[..., Awaitable[list[PodVolume]]]

    async def storm(
        self, driver: DriverProcess, vols: list[PodVolume], slow: str
    ) -> tuple[list[BaseException | None], int]:
        """Every publish at once, the first GET of `slow` held 1.5 s so that they all overlap
        the call: (each publish's error or None, provider Mount calls made)."""
        self.world.add_fault(
            service="kv", method="GET", path=f"/secrets/{slow}", delay_ms=1500, count=1
        )
        before = mount_calls(self.port)
        errors = await publish_all(self.client, driver, vols)
        return errors, mount_calls(self.port) - before


@pytest.fixture
def share(
    share_world: Emulator,
    share_provider: tuple[ProviderProcess, int],
    start_driver: DriverFactory,
    make_spc: SpcFactory,
    pods: Callable[..., Awaitable[list[PodVolume]]],
    admin_client: AsyncClient,
) -> Share:
    return Share(share_world, share_provider[1], admin_client, start_driver, make_spc, pods)


@pytest.mark.parametrize("on", [True, False])
async def test_concurrent_publishes_of_one_spc_share_one_provider_call(
    on: bool, share: Share
) -> None:
    driver = share.start_driver(f"--publish-share-provider-calls={str(on).lower()}")
    spc = await wi_spc(share.make_spc, "share-a", "share-b")
    vols = await share.pods(driver, spc, 20)
    errors, calls = await share.storm(driver, vols, "share-a")
    assert errors == [None] * 20
    assert calls == (1 if on else 20)
    for v in vols:
        assert (v.target / "share-a").read_text() == "value-a"
        assert (v.target / "share-b").read_text() == "value-b"
        assert str(v.target) in mounter.mount_points()  # each its own tmpfs
    saved = driver.metric("node_publish_provider_calls_saved_total")
    assert saved == (19 if on else 0)
    assert driver.metric("node_publish_total") == 20


async def test_different_identities_do_not_share(share: Share, namespace: str) -> None:
    client = share.client
    if not [
        sa
        async for sa in client.list(ServiceAccount, namespace=namespace)
        if sa.metadata is not None and sa.metadata.name == OTHER_SA
    ]:
        await client.create(ServiceAccount(metadata=ObjectMeta(name=OTHER_SA, namespace=namespace)))
    driver = share.start_driver()
    spc = await wi_spc(share.make_spc, "share-a")
    vols = await share.pods(driver, spc, 5) + await share.pods(driver, spc, 5, OTHER_SA)
    errors, calls = await share.storm(driver, vols, "share-a")
    assert errors == [None] * 10
    assert calls == 2  # one per service account
    assert all((v.target / "share-a").read_text() == "value-a" for v in vols)


async def test_a_failing_shared_call_fails_every_publish_alike_and_writes_nothing(
    share: Share, namespace: str
) -> None:
    driver = share.start_driver()
    spc = await wi_spc(share.make_spc, "share-a", "share-missing")
    vols = await share.pods(driver, spc, 8)
    errors, calls = await share.storm(driver, vols, "share-missing")
    assert calls == 1
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
            async for s in share.client.list(SecretProviderClassPodStatus, namespace=namespace)
            if s.metadata is not None
            and (s.metadata.name or "").startswith(f"{v.pod.metadata.name}-")
        ]
        assert spcps == []
    assert len(details) == 1  # the same precise error for each
    assert driver.metric("node_publish_error_total") == 8
