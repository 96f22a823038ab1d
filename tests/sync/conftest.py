"""The SecretSync controller on the real control plane (tests/kube: kube-apiserver with RBAC
and admission policies, the garbage collector), the Key Vault emulator trusting the cluster's
service-account issuer, and our provider as the controller's sidecar on a unix socket. The
controller runs as its own ServiceAccount (daemonset/sync-controller/rbac.yaml), under the
chart's admission policies (syncController.validatingAdmissionPolicies)."""

from __future__ import annotations

import asyncio
import base64
import itertools
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest
from lightkube import ApiError, AsyncClient, KubeConfig, codecs
from lightkube.models.authentication_v1 import TokenRequestSpec
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Namespace, Secret, ServiceAccount, ServiceAccountToken

from csi_driver.kube import SecretProviderClass
from sync_controller.api import SecretSync
from testbed.controlplane import ISSUER, ControlPlane, service_account_kubeconfig
from testbed.emulator import TENANT_ID, Emulator
from testbed.mount_attributes import objects_yaml
from testbed.peers import peer
from testbed.provider import ProviderProcess, ours
from testbed.secretsync import secretsync_body, spc_body
from testbed.sync_controller import SyncControllerProcess
from tests.deploy.render import render
from tests.kube.fixtures import admin_client, control_plane

__all__ = ["admin_client", "control_plane"]

NAMESPACE = "sync"
OTHER_NAMESPACE = "sync-other"
VAULT = "kv-sync"
CLIENT = "0e000001-0000-4000-8000-0000000005a1"
NOROLE_CLIENT = "0e000001-0000-4000-8000-0000000005a2"
AUDIENCE = "api://AzureADTokenExchange"
POLL = 2.0
CONTROLLER_SA = "secrets-store-sync-controller-manager"
_names = itertools.count()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "filterwarnings", "ignore:`verify=<str>` is deprecated:DeprecationWarning"
    )


def unique(prefix: str) -> str:
    return f"{prefix}-{next(_names)}"


def _seed(emulator: Emulator, jwks: dict[str, Any]) -> None:
    def identity(name: str, client: str) -> dict[str, Any]:
        return {
            "name": name,
            "type": "application",
            "clientId": client,
            "federatedCredentials": [
                {
                    "issuer": ISSUER,
                    "subject": f"system:serviceaccount:{ns}:app",
                    "audience": AUDIENCE,
                }
                for ns in (NAMESPACE, OTHER_NAMESPACE)
            ],
        }

    emulator.seed(
        {
            "issuers": [{"issuer": ISSUER, "jwks": jwks}],
            "identities": [identity("sync-wi", CLIENT), identity("sync-norole", NOROLE_CLIENT)],
            "vaults": [
                {
                    "name": VAULT,
                    "tenant": TENANT_ID,
                    "roleAssignments": [{"identity": "sync-wi", "role": "Key Vault Secrets User"}],
                    "secrets": [
                        {"name": "db-password", "value": "hunter2"},
                        {"name": "username", "value": "app-user"},
                    ],
                }
            ],
        }
    )


@dataclass
class World:
    admin: AsyncClient
    emulator: Emulator
    provider: ProviderProcess
    controller: SyncControllerProcess
    kubeconfig: Path
    root: Path

    async def spc(
        self, name: str, objects: list[str], namespace: str = NAMESPACE, client_id: str = CLIENT
    ) -> None:
        items = ({"objectName": o, "objectType": "secret"} for o in objects)
        body = spc_body(
            name, namespace, vault=VAULT, client_id=client_id, objects=objects_yaml(*items)
        )
        await self.admin.create(SecretProviderClass.from_dict(body))

    async def secretsync(
        self, name: str, spc: str, data: dict[str, str], namespace: str = NAMESPACE, **extra: Any
    ) -> None:
        body = secretsync_body(
            name,
            namespace,
            spc,
            data,
            service_account=extra.pop("service_account", "app"),
            secret_type=extra.pop("type", "Opaque"),
            secret_object=extra.pop("secret_object", None),
            **extra,
        )
        await self.admin.create(SecretSync.from_dict(body))

    async def get_sync(self, name: str, namespace: str = NAMESPACE) -> dict[str, Any]:
        obj = await self.admin.get(SecretSync, name, namespace=namespace)
        return dict(obj.to_dict())

    async def secret(self, name: str, namespace: str = NAMESPACE) -> Secret | None:
        try:
            return await self.admin.get(Secret, name, namespace=namespace)
        except ApiError as e:
            if e.status.code == 404:
                return None
            raise


def decoded(secret: Secret) -> dict[str, str]:
    return {k: base64.b64decode(v).decode() for k, v in (secret.data or {}).items()}


async def until(
    check: Callable[[], Awaitable[Any]], within: float = 15.0, what: str = "condition"
) -> Any:
    deadline = time.monotonic() + within
    last: Any = None
    while time.monotonic() < deadline:
        last = await check()
        if last:
            return last
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}; last: {last!r}")


def condition(obj: dict[str, Any], kind: str) -> dict[str, Any]:
    for c in (obj.get("status") or {}).get("conditions") or []:
        if c["type"] == kind:
            return dict(c)
    return {}


async def _apply_policies(admin: AsyncClient, cp: ControlPlane) -> None:
    """The chart's admission policies for the controller (syncController.enabled), applied
    for real; back once a token request they refuse is refused."""
    docs = render(peer("helm"), {"syncController": {"enabled": True}})
    for doc in docs:
        if doc["kind"].startswith("ValidatingAdmissionPolicy"):
            await admin.apply(codecs.from_dict(doc), field_manager="tests", force=True)
    await policies_enforced(cp, admin, NAMESPACE)


async def policies_enforced(cp: ControlPlane, admin: AsyncClient, namespace: str) -> None:
    """Back once the chart's policies refuse the controller's ServiceAccount a token request
    they do not allow (an audience not listed) for the ServiceAccount `app` of `namespace`."""
    kubeconfig = await service_account_kubeconfig(
        cp, admin, "kube-system", CONTROLLER_SA, cp.workdir / "sync-probe.kubeconfig"
    )
    client = AsyncClient(config=KubeConfig.from_file(kubeconfig))
    probe = ServiceAccountToken(
        metadata=ObjectMeta(), spec=TokenRequestSpec(audiences=["api://probe"])
    )
    try:
        for _ in range(100):
            try:
                await client.create(probe, name="app", namespace=namespace)
            except ApiError as e:
                if e.status.code == 403 and "SecretSync controller" in str(e.status.message):
                    return
                raise
            await asyncio.sleep(0.1)
        raise AssertionError("the admission policies are not enforced")
    finally:
        await client.close()


@pytest.fixture(scope="session")
def sync_root() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="ss-", dir="/tmp") as tmp:
        yield Path(tmp)


@pytest.fixture(scope="session")
async def world(
    control_plane: ControlPlane, admin_client: AsyncClient, sync_root: Path, emulator: Emulator
) -> AsyncIterator[World]:
    """On the session's emulator (port 443 is one per namespace), seeded with this tier's
    issuer, identities and vault."""
    cp, admin = control_plane, admin_client
    jwks = httpx.get(
        f"{cp.server}/openid/v1/jwks",
        headers={"Authorization": f"Bearer {cp.admin_token}"},
        verify=str(cp.ca_file),
    ).json()
    _seed(emulator, jwks)
    for ns in (NAMESPACE, OTHER_NAMESPACE):
        await admin.create(Namespace(metadata=ObjectMeta(name=ns)))
        await admin.create(ServiceAccount(metadata=ObjectMeta(name="app", namespace=ns)))
    await _apply_policies(admin, cp)
    providers = sync_root / "provider"
    providers.mkdir()
    provider = ours(
        providers / "azure.sock",
        log=sync_root / "provider.log",
        env={"SSL_CERT_FILE": str(emulator.ca_path)},
    )
    provider.start()
    kubeconfig = await service_account_kubeconfig(
        cp,
        admin,
        "kube-system",
        CONTROLLER_SA,
        sync_root / "controller.kubeconfig",
    )
    controller = SyncControllerProcess(
        kubeconfig,
        providers,
        sync_root / "controller.log",
        f"--token-request-audience={AUDIENCE}",
        f"--rotation-poll-interval={POLL}s",
        "--leader-elect",
        "--leader-election-lease-duration=3s",
        "--leader-election-renew-deadline=2s",
        "--leader-election-retry-period=0.5s",
    ).start()
    world = World(admin, emulator, provider, controller, kubeconfig, sync_root)
    try:
        yield world
    finally:
        world.controller.stop()  # the one a test handed over to, if any
        controller.stop()
        provider.stop()


def fast_lease_controller(world: World, log: str, *extra: str) -> SyncControllerProcess:
    """A controller of the session's world electing on a short Lease (3 s), for stories
    that stop, kill or hand over leaders; logs to `log` under the world's root."""
    return SyncControllerProcess(
        world.kubeconfig,
        world.provider.socket.parent,
        world.root / log,
        f"--token-request-audience={AUDIENCE}",
        f"--rotation-poll-interval={POLL}s",
        "--leader-elect",
        "--leader-election-lease-duration=3s",
        "--leader-election-renew-deadline=2s",
        "--leader-election-retry-period=0.5s",
        *extra,
    )
