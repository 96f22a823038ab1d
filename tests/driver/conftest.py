"""Fixtures for the driver's tests: a real control plane (tests/kube), the driver and a fake
provider as processes, and a kubelet stand-in."""

from __future__ import annotations

import itertools
import json
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from lightkube import AsyncClient
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Namespace

from csi_driver import mounter
from csi_driver.kube import SecretProviderClass, SecretProviderClassV1alpha1
from testbed.controlplane import wait_default_service_account
from testbed.driver import DriverProcess
from testbed.kubelet import Kubelet
from testbed.provider import ProviderProcess
from tests.kube.fixtures import admin_client, control_plane, driver_kubeconfig

__all__ = ["admin_client", "control_plane", "driver_kubeconfig"]

NAMESPACE = "apps"
_names = itertools.count()


def pytest_configure(config: pytest.Config) -> None:
    # lightkube passes the CA file to httpx2 as a string, which httpx2 deprecates
    config.addinivalue_line(
        "filterwarnings", "ignore:`verify=<str>` is deprecated:DeprecationWarning"
    )


def unique(prefix: str) -> str:
    return f"{prefix}-{next(_names)}"


@pytest.fixture(scope="session")
def root() -> Iterator[Path]:
    # short: unix socket paths must stay under 108 bytes
    with tempfile.TemporaryDirectory(prefix="csi-", dir="/tmp") as tmp:
        yield Path(tmp)
        for point in sorted(mounter.mount_points(), reverse=True):
            if point.startswith(tmp + "/"):
                mounter.unmount(point)  # left behind by a failed test


@pytest.fixture(scope="session")
def provider_dirs(root: Path) -> tuple[Path, Path]:
    first, second = root / "providers", root / "providers-extra"
    first.mkdir()
    second.mkdir()
    return first, second


@pytest.fixture(scope="session")
def fake_provider(root: Path, provider_dirs: tuple[Path, Path]) -> Iterator[ProviderProcess]:
    """The fake provider in the *additional* directory: checks the lookup order too."""
    p = ProviderProcess.fake(provider_dirs[1] / "fake.sock", root / "fake-provider.log")
    p.start()
    yield p
    p.stop()


@pytest.fixture(scope="session")
def driver(
    root: Path,
    provider_dirs: tuple[Path, Path],
    driver_kubeconfig: Path,
    fake_provider: ProviderProcess,
) -> Iterator[DriverProcess]:
    # a missing provider is waited for briefly: the bad-input rows see the error after 2 s
    d = DriverProcess(
        root,
        kubeconfig=driver_kubeconfig,
        provider_dirs=provider_dirs,
        extra=("--provider-wait-timeout=2s",),
    )
    d.start()
    yield d
    if d.proc is not None:
        d.stop()


@pytest.fixture(scope="session")
async def namespace(admin_client: AsyncClient) -> str:
    await admin_client.create(Namespace(metadata=ObjectMeta(name=NAMESPACE)))
    await wait_default_service_account(admin_client, NAMESPACE)
    return NAMESPACE


@pytest.fixture(scope="session")
async def kubelet(
    admin_client: AsyncClient, driver: DriverProcess, root: Path
) -> AsyncIterator[Kubelet]:
    k = Kubelet(admin_client, root / "kubelet", str(driver.socket))
    yield k
    await k.close()


SpcFactory = Callable[..., Awaitable[str]]


@pytest.fixture
def make_spc(admin_client: AsyncClient, namespace: str) -> SpcFactory:
    async def make(
        parameters: dict[str, Any] | None = None,
        provider: str | None = "fake",
        name: str | None = None,
        version: str = "v1",
    ) -> str:
        name = name or unique("spc")
        spec: dict[str, Any] = {}
        if provider is not None:
            spec["provider"] = provider
        if parameters is not None:
            spec["parameters"] = {
                k: v if isinstance(v, str) else json.dumps(v) for k, v in parameters.items()
            }
        body = {
            "apiVersion": f"secrets-store.csi.x-k8s.io/{version}",
            "kind": "SecretProviderClass",
            "metadata": {"name": name, "namespace": namespace},
            "spec": spec,
        }
        res = SecretProviderClass if version == "v1" else SecretProviderClassV1alpha1
        await admin_client.create(res.from_dict(body))
        return name

    return make
