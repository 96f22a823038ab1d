"""The DaemonSets on a real node: kubelet 1.37, containerd and runc (the tests/e2e node), the
provider image `make images` built, and daemonset/provider-azure.yaml as written. Kubelet
starts the pod with the manifest's security context (uid 0, no capabilities, no privilege
escalation, read-only image, default seccomp, no service-account token), the provider
creates azure.sock in the hostPath directory kubelet made, the probes pass, the pod is Ready
and the seeds' selector lists it, and the socket answers a gRPC call from the node, where
the driver calls it. One difference from the manifest: hostNetwork, since this node has no
CNI network (docs/e2e.md)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from lightkube import AsyncClient, codecs
from lightkube.resources.core_v1 import Node as NodeObject
from lightkube.resources.core_v1 import Pod

from provider_azure import __version__
from provider_azure.server import RUNTIME_NAME
from secrets_store_api import provider_pb2, provider_pb2_grpc
from tests.e2e import images
from tests.e2e.node import NODE_NAME, Node, NodeControlPlane, reap_stale
from tests.kube.fixtures import prepare_cluster
from tests.peers.locate import peer

from .render import find, plain

SELECTOR: dict[str, Any] = {"app": "secrets-store-provider-azure"}
PROVIDER_IMAGE = "secrets-store-csi-python/provider-azure:0.1.0"
SOCKET_DIR = Path("/var/run/secrets-store-csi-providers")


def _missing(message: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    pytest.skip(message)


def export_image(name: str, out: Path) -> Path:
    """The image `make images` left in buildah's storage, as a docker-archive containerd
    imports, named as the manifest names it (docker.io/ is what containerd makes of it)."""
    if shutil.which("buildah") is None:
        _missing("buildah is missing: run `make deb`")
    env = {**os.environ, "STORAGE_DRIVER": os.environ.get("STORAGE_DRIVER", "vfs")}
    proc = subprocess.run(
        ["buildah", "push", f"localhost/{name}", f"docker-archive:{out}:docker.io/{name}"],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    if proc.returncode != 0:
        _missing(f"image {name} not built (run `make images`): {proc.stderr.strip()[-300:]}")
    return out


@dataclass
class World:
    node: Node
    admin: AsyncClient
    tmp: Path


@pytest.fixture(scope="module")
async def world() -> AsyncIterator[World]:
    for program in ("containerd", "containerd-shim-runc-v2", "runc", "ctr"):
        if shutil.which(program) is None:
            _missing(f"{program} is missing: run `make deb`")
    if os.environ.get("NETNS_RUN_INSIDE") != "1":
        pytest.fail("run inside tests/netns-run", pytrace=False)
    bins = {
        n: peer(n)
        for n in ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet")
    }
    reap_stale()
    tmp = Path(tempfile.mkdtemp(prefix="e2e-", dir="/tmp"))  # e2e-: reap_stale finds it
    (tmp / "owner.pid").write_text(str(os.getpid()))
    provider_tar = export_image(PROVIDER_IMAGE, tmp / "provider.tar")
    cp = NodeControlPlane(
        tmp / "cp", bins["etcd"], bins["kube-apiserver"], bins["kube-controller-manager"]
    )
    (tmp / "node").mkdir()
    node = Node(tmp / "node", cp, kubelet_bin=bins["kubelet"], scheduler_bin=bins["kube-scheduler"])
    admin: AsyncClient | None = None
    try:
        node.isolate()
        node.make_cgroup_root()
        tarballs = [*images.build(tmp), provider_tar]
        node.start_containerd()
        node.import_images(tarballs)
        cp.start()
        admin = await prepare_cluster(cp)
        node.start_scheduler()
        node.start_kubelet()
        await _wait_node_ready(node, admin)
        yield World(node, admin, tmp)
    finally:
        try:
            if admin is not None:
                await _delete_daemonsets(admin)
        finally:
            try:
                node.stop()
            finally:
                if admin is not None:
                    await admin.close()
                cp.stop()
                shutil.rmtree(tmp, ignore_errors=True)


async def _wait_node_ready(node: Node, admin: AsyncClient) -> None:
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        node._alive("kubelet")
        node._alive("containerd")
        # Registered is enough: the node never turns Ready without a CNI network, and
        # hostNetwork pods run regardless.
        with contextlib.suppress(Exception):
            await admin.get(NodeObject, NODE_NAME)
            return
        await asyncio.sleep(0.2)
    raise TimeoutError(f"node not ready:\n{node.log('kubelet')[-4000:]}")


async def _delete_daemonsets(admin: AsyncClient) -> None:
    from lightkube.resources.apps_v1 import DaemonSet

    with contextlib.suppress(Exception):
        await admin.delete(DaemonSet, "secrets-store-provider-azure", namespace="kube-system")
    for _ in range(150):
        pods = [p async for p in admin.list(Pod, namespace="kube-system", labels=SELECTOR)]
        if not pods:
            return
        for p in pods:
            assert p.metadata is not None and p.metadata.name is not None
            with contextlib.suppress(Exception):
                await admin.delete(Pod, p.metadata.name, namespace="kube-system", grace_period=0)
        await asyncio.sleep(0.2)


def provider_docs() -> list[dict[str, Any]]:
    """daemonset/provider-azure.yaml, on the node's network (this node has no CNI)."""
    docs = plain("provider-azure.yaml")
    spec = find(docs, "DaemonSet")["spec"]["template"]["spec"]
    spec["hostNetwork"] = True
    spec["dnsPolicy"] = "ClusterFirstWithHostNet"
    return docs


def _container_pid(marker: str) -> int:
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
            if any(marker.encode() in part for part in cmdline[:2]):
                return int(proc.name)
    raise LookupError(marker)


def check_socket_and_process() -> Path:
    """The socket, in the directory kubelet created for the hostPath; the process kubelet
    started: uid 0, no capability at all, no new privileges, seccomp, read-only root."""
    sock = SOCKET_DIR / "azure.sock"
    assert sock.is_socket()
    assert sock.stat().st_uid == 0 and sock.stat().st_mode & 0o077 == 0
    assert oct(SOCKET_DIR.stat().st_mode & 0o777) == "0o755"
    pid = _container_pid("secrets-store-provider-azure")
    fields = dict(
        line.split(":\t", 1)
        for line in Path(f"/proc/{pid}/status").read_text().splitlines()
        if ":\t" in line
    )
    assert fields["Uid"].split()[:2] == ["0", "0"]
    for cap in ("CapEff", "CapPrm", "CapBnd", "CapAmb", "CapInh"):
        assert int(fields[cap], 16) == 0, f"{cap} = {fields[cap]}"
    assert fields["NoNewPrivs"] == "1"
    assert fields["Seccomp"].strip() == "2"  # filter mode: the runtime's default profile
    # The root filesystem is mounted read-only in the container's mount namespace.
    root = next(
        line.split()
        for line in Path(f"/proc/{pid}/mountinfo").read_text().splitlines()
        if line.split()[4] == "/"
    )
    assert "ro" in root[5].split(","), root
    return sock


async def test_provider_daemonset_runs_as_written(world: World) -> None:
    admin = world.admin
    docs = provider_docs()
    for doc in docs:
        await admin.apply(codecs.from_dict(doc), field_manager="tests", force=True)
    ready: Pod | None = None
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and ready is None:
        world.node._alive("kubelet")
        async for pod in admin.list(Pod, namespace="kube-system", labels=SELECTOR):
            st = pod.status
            if st and any(c.type == "Ready" and c.status == "True" for c in st.conditions or []):
                ready = pod
        await asyncio.sleep(0.3)
    assert ready is not None, f"no Ready provider pod:\n{world.node.log('kubelet')[-4000:]}"
    assert ready.status is not None and ready.spec is not None
    (cs,) = ready.status.containerStatuses or []
    assert cs.ready and cs.restartCount == 0
    assert cs.image.endswith(PROVIDER_IMAGE)
    # No token in the pod: the ServiceAccount and the pod both say so.
    mounts = [m.mountPath for c in ready.spec.containers for m in c.volumeMounts or []]
    assert not any("serviceaccount" in m for m in mounts), mounts

    sock = check_socket_and_process()

    # The driver's side: a Version call over the socket from the node.
    async with grpc.aio.insecure_channel(f"unix://{sock}") as channel:
        stub = provider_pb2_grpc.CSIDriverProviderStub(channel)
        answer = await stub.Version(provider_pb2.VersionRequest(version="v1alpha1"), timeout=10)
    assert (answer.version, answer.runtime_name, answer.runtime_version) == (
        "v1alpha1",
        RUNTIME_NAME,
        __version__,
    )
