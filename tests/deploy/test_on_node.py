"""The DaemonSets on a real node: kubelet 1.37, containerd and runc (the tests/e2e node) and the
images `make images` builds.

- daemonset/provider-azure.yaml as written: kubelet starts the pod with the manifest's security
  context (uid 0, no capabilities, no privilege escalation, read-only image, default seccomp,
  no service-account token), the provider creates azure.sock in the hostPath directory kubelet
  made, the probes pass, the pod is Ready, and the socket answers a gRPC call from the node.
- daemonset/secrets-store-csi-driver.yaml's driver container as written (privileged,
  Bidirectional on the pods dir, its ServiceAccount's token under daemonset/rbac.yaml): kubelet
  publishes a pod's inline volume through it; the tmpfs it mounts inside its container reaches
  the node and the app container; unpublish removes it.

Differences from the manifests, all for this node: hostNetwork (no CNI network here,
docs/e2e.md), the API server on loopback (no Service network), the kubelet root in a temp dir,
and, for the driver, no sidecars (their upstream images are not reachable here: a stand-in
registers the socket from the node, testbed/registrar.py) and so no liveness probe.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from lightkube import AsyncClient, codecs
from lightkube.resources.core_v1 import ConfigMap, Pod
from lightkube.resources.core_v1 import Node as NodeObject

from provider_azure import RUNTIME_NAME, __version__
from secrets_store_api import provider_pb2, provider_pb2_grpc
from testbed import images
from testbed.controlplane import prepare_cluster
from testbed.node import NODE_NAME, NODE_PEERS, Node, NodeControlPlane, new_node
from testbed.peers import missing, peer
from testbed.rundir import reap_stale, run_dir

from .render import find, plain

SELECTOR: dict[str, Any] = {"app": "secrets-store-provider-azure"}
PROVIDER_IMAGE = "secrets-store-csi-python/provider-azure:0.1.0"
DRIVER_IMAGE = "secrets-store-csi-python/driver:0.1.0"
DRIVER_NAME = "secrets-store.csi.k8s.io"
SOCKET_DIR = Path("/var/run/secrets-store-csi-providers")


def export_image(name: str, out: Path) -> Path:
    """The image `make images` left in buildah's storage, as a docker-archive containerd
    imports, named as the manifest names it (docker.io/ is what containerd makes of it)."""
    if shutil.which("buildah") is None:
        missing("buildah is missing: run `make deb`")
    env = {**os.environ, "STORAGE_DRIVER": os.environ.get("STORAGE_DRIVER", "vfs")}
    proc = subprocess.run(
        ["buildah", "push", f"localhost/{name}", f"docker-archive:{out}:docker.io/{name}"],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    if proc.returncode != 0:
        missing(f"image {name} not built (run `make images`): {proc.stderr.strip()[-300:]}")
    return out


@dataclass
class World:
    node: Node
    cp: NodeControlPlane
    admin: AsyncClient
    tmp: Path


@contextlib.asynccontextmanager
async def node_with_images(*names: str) -> AsyncIterator[World]:
    """A real node (kubelet, containerd, kube-scheduler, the control plane) with these images
    from `make images` imported; stopped and removed on exit."""
    for program in ("containerd", "containerd-shim-runc-v2", "runc", "ctr"):
        if shutil.which(program) is None:
            missing(f"{program} is missing: run `make deb`")
    if os.environ.get("NETNS_RUN_INSIDE") != "1":
        pytest.fail("run inside tests/netns-run", pytrace=False)
    bins = {n: peer(n) for n in NODE_PEERS}
    reap_stale()
    tmp = run_dir()
    tarballs = [export_image(n, tmp / f"{n.rsplit('/', 1)[-1].split(':')[0]}.tar") for n in names]
    node = new_node(tmp, bins)
    cp = node.cp
    admin: AsyncClient | None = None
    try:
        node.start_runtime(tarballs)
        cp.start()
        admin = await prepare_cluster(cp)
        node.start_scheduler()
        node.start_kubelet()
        await _wait_node_ready(node, admin)
        yield World(node, cp, admin, tmp)
    finally:
        try:
            node.stop()
        finally:
            if admin is not None:
                await admin.close()
            cp.stop()
            shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="module")
async def world() -> AsyncIterator[World]:
    async with node_with_images(PROVIDER_IMAGE, DRIVER_IMAGE) as w:
        try:
            yield w
        finally:
            await _delete_daemonsets(w.admin)


async def _wait_node_ready(node: Node, admin: AsyncClient) -> None:
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        node.check_alive()
        # Registered is enough: the node never turns Ready without a CNI network, and
        # hostNetwork pods run regardless.
        with contextlib.suppress(Exception):
            await admin.get(NodeObject, NODE_NAME)
            return
        await asyncio.sleep(0.2)
    raise TimeoutError(f"node not ready:\n{node.log('kubelet')[-4000:]}")


async def _delete_daemonsets(admin: AsyncClient) -> None:
    from lightkube.resources.apps_v1 import DaemonSet

    for name in ("secrets-store-provider-azure", "secrets-store-csi-driver"):
        with contextlib.suppress(Exception):
            await admin.delete(DaemonSet, name, namespace="kube-system")
    for _ in range(150):
        pods = [
            p
            async for p in admin.list(Pod, namespace="kube-system")
            if p.metadata and (p.metadata.labels or {}).get("app") in DAEMONS
        ]
        if not pods:
            return
        for p in pods:
            assert p.metadata is not None and p.metadata.name is not None
            with contextlib.suppress(Exception):
                await admin.delete(Pod, p.metadata.name, namespace="kube-system", grace_period=0)
        await asyncio.sleep(0.2)


DAEMONS = ("secrets-store-csi-driver", "secrets-store-provider-azure")


def provider_docs() -> list[dict[str, Any]]:
    """daemonset/provider-azure.yaml, on the node's network (this node has no CNI)."""
    docs = plain("provider-azure.yaml")
    spec = find(docs, "DaemonSet")["spec"]["template"]["spec"]
    spec["hostNetwork"] = True
    spec["dnsPolicy"] = "ClusterFirstWithHostNet"
    return docs


def container_pid(marker: str) -> int:
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
            if any(marker.encode() in part for part in cmdline[:2]):
                return int(proc.name)
    raise LookupError(marker)


def service_account_dir_in_pod(marker: str) -> tuple[list[str], str]:
    """What the container sees in its service-account directory: the names, and ca.crt. The
    mount point as the container has it (/var/run is a symlink to /run in the image)."""
    pid = container_pid(marker)
    (point,) = [
        line.split()[4]
        for line in Path(f"/proc/{pid}/mountinfo").read_text().splitlines()
        if line.split()[4].endswith("/secrets/kubernetes.io/serviceaccount")
    ]
    in_pod = Path(f"/proc/{pid}/root{point}")
    names = sorted(n for n in os.listdir(in_pod) if not n.startswith(".."))
    return names, (in_pod / "ca.crt").read_text()


def check_socket_and_process() -> Path:
    """The socket, in the directory kubelet created for the hostPath; the process kubelet
    started: uid 0, confined (assert_confined)."""
    sock = SOCKET_DIR / "azure.sock"
    assert sock.is_socket()
    assert sock.stat().st_uid == 0 and sock.stat().st_mode & 0o077 == 0
    assert oct(SOCKET_DIR.stat().st_mode & 0o777) == "0o755"
    assert_confined(container_pid("secrets-store-provider-azure"), 0)
    return sock


def assert_confined(pid: int, uid: int) -> None:
    """A container's process as kubelet started it: this uid, no capability at all, no new
    privileges, the runtime's default seccomp profile, a read-only root."""
    fields = dict(
        line.split(":\t", 1)
        for line in Path(f"/proc/{pid}/status").read_text().splitlines()
        if ":\t" in line
    )
    assert fields["Uid"].split()[:2] == [str(uid)] * 2, fields["Uid"]
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


async def test_provider_daemonset_runs_as_written(world: World) -> None:
    admin = world.admin
    docs = provider_docs()
    for doc in docs:
        await admin.apply(codecs.from_dict(doc), field_manager="tests", force=True)
    ready: Pod | None = None
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and ready is None:
        world.node.check_alive("kubelet")
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
    # No token in the pod: the ServiceAccount and the pod both say so; of the service-account
    # directory only the cluster CA (a ConfigMap volume), for identity binding.
    sa_dir = "/var/run/secrets/kubernetes.io/serviceaccount"
    mounts = {m.mountPath: m.name for c in ready.spec.containers for m in c.volumeMounts or []}
    assert [p for p in mounts if "serviceaccount" in p] == [sa_dir], mounts
    (ca_volume,) = [v for v in ready.spec.volumes or [] if v.name == mounts[sa_dir]]
    assert ca_volume.configMap is not None and ca_volume.projected is None
    assert ca_volume.configMap.name == "kube-root-ca.crt"

    sock = check_socket_and_process()
    # The CA in the container is the cluster's (kube-root-ca.crt), alone: no token beside it.
    root_ca = await admin.get(ConfigMap, "kube-root-ca.crt", namespace="kube-system")
    names, ca = service_account_dir_in_pod("secrets-store-provider-azure")
    assert names == ["ca.crt"]
    assert ca == (root_ca.data or {})["ca.crt"]

    # The driver's side: a Version call over the socket from the node.
    async with grpc.aio.insecure_channel(f"unix://{sock}") as channel:
        stub = provider_pb2_grpc.CSIDriverProviderStub(channel)
        answer = await stub.Version(provider_pb2.VersionRequest(version="v1alpha1"), timeout=10)
    assert (answer.version, answer.runtime_name, answer.runtime_version) == (
        "v1alpha1",
        RUNTIME_NAME,
        __version__,
    )


def _replace_paths(value: Any, old: str, new: str) -> Any:
    if isinstance(value, str):
        return value.replace(old, new)
    if isinstance(value, list):
        return [_replace_paths(v, old, new) for v in value]
    if isinstance(value, dict):
        return {k: _replace_paths(v, old, new) for k, v in value.items()}
    return value


def driver_docs(kubelet_root: Path, apiserver: str) -> list[dict[str, Any]]:
    """daemonset/secrets-store-csi-driver.yaml for this node: its kubelet root, the node's
    network (no CNI), the API server on loopback (no Service network either), and only the
    driver container: the registrar and livenessprobe images are not reachable here, so a
    stand-in registers the socket from the node (testbed/registrar.py) and the driver's
    liveness probe, which the livenessprobe sidecar answers, is left out."""
    docs = _replace_paths(
        plain("secrets-store-csi-driver.yaml"), "/var/lib/kubelet", str(kubelet_root)
    )
    ds = find(docs, "DaemonSet")
    spec = ds["spec"]["template"]["spec"]
    spec["hostNetwork"] = True
    spec["dnsPolicy"] = "ClusterFirstWithHostNet"
    spec["containers"] = [c for c in spec["containers"] if c["name"] == "secrets-store"]
    (driver,) = spec["containers"]
    del driver["livenessProbe"]
    host, port = apiserver.removeprefix("https://").rsplit(":", 1)
    driver["env"] += [
        {"name": "KUBERNETES_SERVICE_HOST", "value": host},
        {"name": "KUBERNETES_SERVICE_PORT", "value": port},
    ]
    return list(docs)


async def test_driver_daemonset_mounts_a_pod_volume(world: World) -> None:
    """The driver container as written (privileged, Bidirectional on the pods dir, the
    kubelet's sockets, its ServiceAccount's token and daemonset/rbac.yaml): kubelet publishes
    a pod's inline volume through it, the tmpfs it mounts inside its container reaches the
    node and the app container, and unpublish removes it."""
    from csi_driver.kube import SecretProviderClass, SecretProviderClassPodStatus
    from testbed.provider import ProviderProcess
    from testbed.registrar import Registrar

    admin, node = world.admin, world.node
    for doc in driver_docs(node.root, world.cp.server):
        await admin.apply(codecs.from_dict(doc), field_manager="tests", force=True)
    csi_sock = node.root / "plugins" / "csi-secrets-store" / "csi.sock"
    deadline = time.monotonic() + 90
    while not csi_sock.exists():
        assert time.monotonic() < deadline, f"no driver socket:\n{node.log('kubelet')[-3000:]}"
        node.check_alive("kubelet")
        await asyncio.sleep(0.3)
    registrar = Registrar(node.root, DRIVER_NAME, csi_sock, world.tmp / "stubs")
    registrar.start()
    await asyncio.to_thread(SOCKET_DIR.mkdir, parents=True, exist_ok=True)
    fake = ProviderProcess.fake(SOCKET_DIR / "fake.sock", world.tmp / "fake-provider.log")
    fake.start()
    try:
        await asyncio.to_thread(registrar.registered.wait, 60)
        assert registrar.registered.is_set(), f"not registered: {registrar.errors}"
        await admin.apply(
            SecretProviderClass.from_dict(
                {
                    "apiVersion": "secrets-store.csi.x-k8s.io/v1",
                    "kind": "SecretProviderClass",
                    "metadata": {"name": "on-node", "namespace": "default"},
                    "spec": {
                        "provider": "fake",
                        "parameters": {"fake.files": '{"hello.txt": "mounted by the DaemonSet"}'},
                    },
                }
            ),
            field_manager="tests",
        )
        app = Pod.from_dict(
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": "app", "namespace": "default"},
                "spec": {
                    "hostNetwork": True,
                    "terminationGracePeriodSeconds": 1,
                    "tolerations": [{"operator": "Exists"}],
                    "containers": [
                        {
                            "name": "app",
                            "image": images.BUSYBOX_IMAGE,
                            "imagePullPolicy": "Never",
                            "command": [
                                "/bin/sh",
                                "-c",
                                "cat /mnt/secrets/hello.txt; trap 'exit 0' TERM; sleep 3600 & wait",
                            ],
                            "volumeMounts": [
                                {"name": "s", "mountPath": "/mnt/secrets", "readOnly": True}
                            ],
                        }
                    ],
                    "volumes": [
                        {
                            "name": "s",
                            "csi": {
                                "driver": DRIVER_NAME,
                                "readOnly": True,
                                "volumeAttributes": {"secretProviderClass": "on-node"},
                            },
                        }
                    ],
                },
            }
        )
        assert isinstance(app, Pod)
        pod = await admin.create(app)
        assert pod.metadata is not None and pod.metadata.uid is not None
        uid = pod.metadata.uid
        running = False
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and not running:
            pod = await admin.get(Pod, "app", namespace="default")
            running = pod.status is not None and pod.status.phase == "Running"
            await asyncio.sleep(0.3)
        assert running, f"app pod not Running: {pod.status}\n{node.log('kubelet')[-3000:]}"
        target = node.pod_volume(uid, "s")
        # mounted inside the driver's container, visible on the node (Bidirectional)
        assert await asyncio.to_thread(_is_tmpfs_mount, target)
        assert (target / "hello.txt").read_text() == "mounted by the DaemonSet"
        # and in the app container
        seen = await asyncio.to_thread(
            _kubectl, world, "exec", "-n", "default", "app", "--", "cat", "/mnt/secrets/hello.txt"
        )
        assert seen == "mounted by the DaemonSet"
        # written through the API with the driver pod's own ServiceAccount token
        statuses = [
            st async for st in admin.list(SecretProviderClassPodStatus, namespace="default")
        ]
        assert [st["status"]["podName"] for st in statuses] == ["app"]
        assert statuses[0]["metadata"]["labels"] == {
            "internal.secrets-store.csi.k8s.io/node-name": NODE_NAME
        }
        await admin.delete(Pod, "app", namespace="default")
        for _ in range(150):
            if not await asyncio.to_thread(_is_tmpfs_mount, target) and not target.exists():
                break
            await asyncio.sleep(0.2)
        assert not await asyncio.to_thread(_is_tmpfs_mount, target), "still mounted"
    finally:
        fake.stop()
        registrar.stop()


def _kubectl(world: World, *args: str) -> str:
    proc = subprocess.run(
        [
            str(peer("kubectl")),
            f"--kubeconfig={world.cp.admin_kubeconfig}",
            f"--cache-dir={world.tmp / 'kubectl-cache'}",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def _is_tmpfs_mount(path: Path) -> bool:
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        if fields[4] == str(path):
            return fields[fields.index("-") + 1] == "tmpfs"
    return False
