"""What the driver benches share: a real control plane (etcd, kube-apiserver,
kube-controller-manager) with daemonset/ applied, a `bench` namespace whose default
ServiceAccount exists, a kubeconfig with the driver's own ServiceAccount token, two provider
directories, and a teardown that stops every process the bench started and leaves nothing
mounted under its temporary directory."""

from __future__ import annotations

import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from lightkube import AsyncClient
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Namespace

from csi_driver import mounter
from testbed.controlplane import (
    ControlPlane,
    driver_token_kubeconfig,
    prepare_cluster,
    wait_default_service_account,
)
from testbed.peers import peer_path

NAMESPACE = "bench"


class Process(Protocol):
    @property
    def proc(self) -> object: ...

    def stop(self) -> object: ...


@dataclass
class BenchCluster:
    root: Path
    cp: ControlPlane
    admin: AsyncClient
    driver_kubeconfig: Path
    provider_dirs: tuple[Path, Path]
    processes: list[Process] = field(default_factory=list)

    def started(self, process: Process) -> None:
        """Stop `process` at teardown if it is still running then."""
        self.processes.append(process)


@asynccontextmanager
async def bench_cluster() -> AsyncIterator[BenchCluster]:
    with tempfile.TemporaryDirectory(prefix="bench-", dir="/tmp") as tmp:
        root = Path(tmp)
        cp = ControlPlane(
            root / "kube",
            peer_path("etcd"),
            peer_path("kube-apiserver"),
            peer_path("kube-controller-manager"),
        )
        cp.start()
        admin: AsyncClient | None = None
        processes: list[Process] = []
        try:
            admin = await prepare_cluster(cp)
            kubeconfig = await driver_token_kubeconfig(cp, admin)
            await admin.create(Namespace(metadata=ObjectMeta(name=NAMESPACE)))
            await wait_default_service_account(admin, NAMESPACE)
            dirs = (root / "providers", root / "providers-extra")
            for d in dirs:
                d.mkdir()
            cluster = BenchCluster(root, cp, admin, kubeconfig, dirs, processes)
            yield cluster
        finally:
            for process in reversed(processes):
                if process.proc is not None:
                    process.stop()
            if admin is not None:
                await admin.close()
            cp.stop()
            for point in sorted(mounter.mount_points(), reverse=True):
                if point.startswith(tmp + "/"):
                    mounter.unmount(point)
