"""The whole node path with the real pieces: kubelet stand-in → this driver (own
ServiceAccount, real kube-apiserver) → provider_azure → the Key Vault emulator.

Workload identity uses a real TokenRequest token: the emulator trusts this control plane's
service-account issuer (its JWKS read from the apiserver), as Entra ID trusts a cluster's
OIDC issuer."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from lightkube import AsyncClient
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Secret

from csi_driver import mounter
from csi_driver.kube import SecretProviderClassPodStatus
from testbed.controlplane import ISSUER, ControlPlane
from testbed.driver import DriverProcess
from testbed.emulator import TENANT_ID, Emulator
from testbed.kubelet import Kubelet
from testbed.provider import ours

from .conftest import SpcFactory, unique

VAULT = "kv-driver-e2e"
WI_CLIENT = "0d000001-0000-4000-8000-0000000000d1"
SP_CLIENT, SP_SECRET = "0d000002-0000-4000-8000-0000000000d2", "driver-e2e-sp-secret"


def _objects(*names: str) -> str:
    items = [yaml.safe_dump({"objectName": n, "objectType": "secret"}) for n in names]
    return yaml.safe_dump({"array": items})


@pytest.fixture(scope="module")
def azure_world(emulator: Emulator, control_plane: ControlPlane, namespace: str) -> None:
    jwks = control_plane.jwks()
    emulator.seed(
        {
            "issuers": [{"issuer": ISSUER, "jwks": jwks}],
            "identities": [
                {
                    "name": "driver-e2e-wi",
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
                    "name": "driver-e2e-sp",
                    "type": "servicePrincipal",
                    "clientId": SP_CLIENT,
                    "clientSecret": SP_SECRET,
                },
            ],
            "vaults": [
                {
                    "name": VAULT,
                    "tenant": TENANT_ID,
                    "roleAssignments": [
                        {"identity": "driver-e2e-wi", "role": "Key Vault Secrets User"},
                        {"identity": "driver-e2e-sp", "role": "Key Vault Secrets User"},
                    ],
                    "secrets": [
                        {"name": "db-password", "value": "hunter2-from-keyvault"},
                        {"name": "api-key", "value": "k-123"},
                    ],
                }
            ],
        }
    )


@pytest.fixture(scope="module")
def azure_driver(root: Path, driver_kubeconfig: Path, azure_world: None) -> Iterator[DriverProcess]:
    dirs = (root / "azure-providers", root / "azure-providers-extra")
    for d in dirs:
        d.mkdir(exist_ok=True)
    sock = dirs[0] / "azure.sock"
    provider = ours(sock, log=root / "azure-provider.log")
    provider.start()
    driver = DriverProcess(
        root, kubeconfig=driver_kubeconfig, provider_dirs=dirs, name="azure-driver"
    )
    driver.start()
    yield driver
    driver.stop()
    provider.stop()


async def test_workload_identity_publish(
    azure_driver: DriverProcess,
    admin_client: AsyncClient,
    make_spc: SpcFactory,
    namespace: str,
    root: Path,
) -> None:
    spc = await make_spc(
        {
            "keyvaultName": VAULT,
            "tenantId": TENANT_ID,
            "clientID": WI_CLIENT,
            "usePodIdentity": "false",
            "objects": _objects("db-password", "api-key"),
        },
        provider="azure",
    )
    kubelet = Kubelet(admin_client, root / "kubelet-azure", str(azure_driver.socket))
    try:
        pod = await kubelet.create_pod(namespace, unique("wi"), spc)
        vol = await kubelet.volume(pod)
        await kubelet.publish(vol)
        assert (vol.target / "db-password").read_text() == "hunter2-from-keyvault"
        assert (vol.target / "api-key").read_text() == "k-123"
        spcps = await admin_client.get(
            SecretProviderClassPodStatus,
            f"{pod.metadata.name}-{namespace}-{spc}",
            namespace=namespace,
        )
        ids = [o["id"] for o in spcps.to_dict()["status"]["objects"]]
        assert ids == ["secret/api-key", "secret/db-password"]
        assert "hunter2" not in azure_driver.logs()
        await kubelet.unpublish(vol)
        assert str(vol.target) not in mounter.mount_points()
    finally:
        await kubelet.close()


async def test_service_principal_publish(
    azure_driver: DriverProcess,
    admin_client: AsyncClient,
    make_spc: SpcFactory,
    namespace: str,
    root: Path,
) -> None:
    creds = unique("kv-creds")
    await admin_client.create(
        Secret(
            metadata=ObjectMeta(name=creds, namespace=namespace),
            data={
                "clientid": base64.b64encode(SP_CLIENT.encode()).decode(),
                "clientsecret": base64.b64encode(SP_SECRET.encode()).decode(),
            },
        )
    )
    spc = await make_spc(
        {"keyvaultName": VAULT, "tenantId": TENANT_ID, "objects": _objects("db-password")},
        provider="azure",
    )
    kubelet = Kubelet(admin_client, root / "kubelet-azure", str(azure_driver.socket))
    try:
        pod = await kubelet.create_pod(namespace, unique("sp"), spc, secret_ref=creds)
        vol = await kubelet.volume(pod)
        assert json.loads(json.dumps(vol.secrets))["clientid"] == SP_CLIENT
        await kubelet.publish(vol)
        assert (vol.target / "db-password").read_text() == "hunter2-from-keyvault"
        assert SP_SECRET not in azure_driver.logs()
        await kubelet.unpublish(vol)
    finally:
        await kubelet.close()
