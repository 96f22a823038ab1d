"""Find the Go-built peers that `make peers` (tests/peers/build-peers.sh) puts in the cache
outside the repo.

In CI (CI=true) a missing peer is a failure, never a skip: a skip would hide it. pytest is
imported only then, so the demos and benchmarks can locate peers without it.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import NoReturn

VERSIONS = {
    "kubernetes": os.environ.get("K8S_VERSION", "v1.37.2"),
    "etcd": os.environ.get("ETCD_VERSION", "v3.7.3"),
    "csi-sanity": os.environ.get("CSI_SANITY_VERSION", "v5.6.0"),
    "azure-provider": os.environ.get("AZURE_PROVIDER_VERSION", "v1.8.2"),
    "helm": os.environ.get("HELM_VERSION", "v3.22.0"),
}
BINARIES = {
    "kube-apiserver": ("kubernetes", "kube-apiserver"),
    "kube-controller-manager": ("kubernetes", "kube-controller-manager"),
    "kube-scheduler": ("kubernetes", "kube-scheduler"),
    "kubelet": ("kubernetes", "kubelet"),
    "kubectl": ("kubernetes", "kubectl"),
    "etcd": ("etcd", "etcd"),
    "csi-sanity": ("csi-sanity", "csi-sanity"),
    "azure-provider": ("azure-provider", "secrets-store-csi-driver-provider-azure"),
    "helm": ("helm", "helm"),
}


def peers_dir() -> Path:
    default = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return Path(os.environ.get("PEERS_DIR", default / "secrets-store-csi-peers"))


def peer_path(binary: str) -> Path:
    """Where `make peers` puts a peer binary (it may not be built)."""
    group, name = BINARIES[binary]
    return peers_dir() / f"{group}-{VERSIONS[group]}" / name


def is_built(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def peer(binary: str) -> Path:
    """Path of a peer binary; fails under CI=true, skips elsewhere, when it is not built."""
    path = peer_path(binary)
    if is_built(path):
        return path
    missing(f"test peer {binary} missing at {path}: run `make peers`")


def missing(message: str) -> NoReturn:
    """Something a test needs is absent: a failure under CI=true (a skip would hide it),
    a skip elsewhere."""
    import pytest

    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def require_programs(*programs: str, who: str) -> None:
    """The Debian programs `who` needs (installed by `make deb`) are on PATH."""
    absent = [p for p in programs if shutil.which(p) is None]
    if absent:
        missing(f"{who} needs {', '.join(absent)}: run `make deb`")
