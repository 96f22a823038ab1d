"""Session fixtures: a control plane with the project's CRDs and RBAC, an admin client, and
a kubeconfig carrying the driver ServiceAccount's own token (so the driver runs under its
RBAC, not as admin). Import these names into a conftest.py; the work is testbed.controlplane's."""

from __future__ import annotations

import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from lightkube import AsyncClient

from testbed.controlplane import ControlPlane, driver_token_kubeconfig, prepare_cluster
from testbed.peers import peer


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


@pytest.fixture(scope="session")
async def admin_client(control_plane: ControlPlane) -> AsyncIterator[AsyncClient]:
    """Admin client on a cluster with daemonset/ applied and kube-controller-manager up."""
    client = await prepare_cluster(control_plane)
    yield client
    await client.close()


@pytest.fixture(scope="session")
async def driver_kubeconfig(control_plane: ControlPlane, admin_client: AsyncClient) -> Path:
    return await driver_token_kubeconfig(control_plane, admin_client)


__all__ = ["admin_client", "control_plane", "driver_kubeconfig"]
