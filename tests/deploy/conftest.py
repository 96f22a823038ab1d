"""Fixtures for the deploy tests: the real control plane (tests/kube) with daemonset/'s CRDs,
CSIDriver and RBAC applied, and kubectl/helm from the peers cache."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from testbed.controlplane import ControlPlane
from testbed.peers import peer
from tests.kube.fixtures import admin_client, control_plane

__all__ = ["admin_client", "control_plane"]

Kubectl = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture(scope="session")
def helm_bin() -> Path:
    return peer("helm")


@pytest.fixture(scope="session")
def kubectl(
    control_plane: ControlPlane, admin_client: object, tmp_path_factory: pytest.TempPathFactory
) -> Kubectl:
    """kubectl (the 1.37 peer) as the cluster admin; admin_client has applied daemonset/'s
    CRDs, CSIDriver and RBAC and started kube-controller-manager."""
    binary = peer("kubectl")
    cache = tmp_path_factory.mktemp("kubectl-cache")

    def run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                str(binary),
                f"--kubeconfig={control_plane.admin_kubeconfig}",
                f"--cache-dir={cache}",
                *args,
            ],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    return run
