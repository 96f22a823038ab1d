"""Session fixtures: a control plane with the project's CRDs and RBAC, an admin client, and
a kubeconfig carrying the driver ServiceAccount's own token (so the driver runs under its
RBAC, not as admin). Import these names into a conftest.py."""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from lightkube import AsyncClient, KubeConfig
from lightkube.generic_resource import create_global_resource
from lightkube.models.authentication_v1 import TokenRequestSpec
from lightkube.models.meta_v1 import ObjectMeta

from tests.peers.locate import peer

from .controlplane import ISSUER, ControlPlane, manifests, write_kubeconfig

CRD = create_global_resource(
    "apiextensions.k8s.io", "v1", "CustomResourceDefinition", "customresourcedefinitions"
)
DRIVER_SA = ("kube-system", "secrets-store-csi-driver")


@pytest.fixture(scope="session")
def control_plane() -> Iterator[ControlPlane]:
    etcd, apiserver, kcm = peer("etcd"), peer("kube-apiserver"), peer("kube-controller-manager")
    with tempfile.TemporaryDirectory(prefix="kube-") as tmp:
        cp = ControlPlane(Path(tmp), etcd, apiserver, kcm)
        try:
            cp.start()
            yield cp
        finally:
            cp.stop()


async def _apply_all(client: AsyncClient, docs: list[dict[str, object]]) -> None:
    from lightkube import codecs

    for doc in docs:
        obj = codecs.from_dict(doc)
        await client.apply(obj, field_manager="tests", force=True)


async def prepare_cluster(cp: ControlPlane) -> AsyncClient:
    """Apply daemonset/ (CRDs first, until Established), start kube-controller-manager;
    returns an admin client."""
    client = AsyncClient(config=KubeConfig.from_file(cp.admin_kubeconfig), field_manager="tests")
    await _apply_all(
        client,
        manifests("crd-secretproviderclasses.yaml", "crd-secretproviderclasspodstatuses.yaml"),
    )
    for name in (
        "secretproviderclasses.secrets-store.csi.x-k8s.io",
        "secretproviderclasspodstatuses.secrets-store.csi.x-k8s.io",
    ):
        for _ in range(200):
            crd = await client.get(CRD, name)
            conditions = (crd.get("status") or {}).get("conditions") or []
            if any(c["type"] == "Established" and c["status"] == "True" for c in conditions):
                break
            await asyncio.sleep(0.05)
    await _apply_all(client, manifests("csidriver.yaml", "rbac.yaml"))
    cp.start_controller_manager()
    return client


async def driver_token_kubeconfig(cp: ControlPlane, admin: AsyncClient) -> Path:
    """Kubeconfig with a token of the driver's own ServiceAccount (daemonset/rbac.yaml)."""
    from lightkube.resources.core_v1 import ServiceAccountToken

    ns, name = DRIVER_SA
    tr = await admin.create(
        ServiceAccountToken(
            metadata=ObjectMeta(),
            spec=TokenRequestSpec(audiences=[ISSUER], expirationSeconds=86400),
        ),
        name=name,
        namespace=ns,
    )
    assert tr.status is not None
    return write_kubeconfig(
        cp.workdir / "driver.kubeconfig", cp.server, cp.ca_file, tr.status.token
    )


async def service_account_kubeconfig(
    cp: ControlPlane, admin: AsyncClient, namespace: str, name: str, path: Path
) -> Path:
    """Kubeconfig with a token of any ServiceAccount (least-privilege tests bind their own)."""
    from lightkube.resources.core_v1 import ServiceAccountToken

    tr = await admin.create(
        ServiceAccountToken(
            metadata=ObjectMeta(),
            spec=TokenRequestSpec(audiences=[ISSUER], expirationSeconds=86400),
        ),
        name=name,
        namespace=namespace,
    )
    assert tr.status is not None
    return write_kubeconfig(path, cp.server, cp.ca_file, tr.status.token)


@pytest.fixture(scope="session")
async def admin_client(control_plane: ControlPlane) -> AsyncIterator[AsyncClient]:
    """Admin client on a cluster with daemonset/ applied and kube-controller-manager up."""
    client = await prepare_cluster(control_plane)
    yield client
    await client.close()


@pytest.fixture(scope="session")
async def driver_kubeconfig(control_plane: ControlPlane, admin_client: AsyncClient) -> Path:
    return await driver_token_kubeconfig(control_plane, admin_client)


__all__ = [
    "admin_client",
    "control_plane",
    "driver_kubeconfig",
    "prepare_cluster",
    "service_account_kubeconfig",
]
