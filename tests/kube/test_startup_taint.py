"""The startup taint against a real API server (issue 14): removed once the driver serves, is
registered in the node's CSINode and its providers answer; every fault row keeps it, says what
is missing, and never drops another taint. The driver's own ServiceAccount runs it, under
daemonset/rbac.yaml + rbac-startup-taint.yaml (the Forbidden row: a role without patch)."""

from __future__ import annotations

import asyncio
import itertools
import logging
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from grpc import aio
from lightkube import AsyncClient, KubeConfig
from lightkube.codecs import from_dict
from lightkube.models.core_v1 import NodeSpec, Taint
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.models.storage_v1 import CSINodeDriver, CSINodeSpec
from lightkube.resources.core_v1 import Event, Node
from lightkube.resources.storage_v1 import CSINode
from prometheus_client import CollectorRegistry

from csi_driver import DRIVER_NAME
from csi_driver.events import EventRecorder
from csi_driver.metrics import Metrics
from csi_driver.provider_client import ProviderClients
from csi_driver.servicers import IdentityServicer
from csi_driver.startup_taint import KEPT, REMOVED, TAINT_KEY, StartupTaint
from secrets_store_api import csi_pb2_grpc, provider_pb2_grpc
from testbed.controlplane import (
    ControlPlane,
    manifests,
    service_account_kubeconfig,
    service_account_with_rules,
)
from testbed.driver import DriverProcess
from testbed.fake_provider import FakeProvider
from tests.kube.fixtures import admin_client, control_plane, driver_kubeconfig

__all__ = ["admin_client", "control_plane", "driver_kubeconfig"]

pytestmark = pytest.mark.filterwarnings("ignore:`verify=<str>` is deprecated:DeprecationWarning")

OTHER = [Taint(key="dedicated", value="db", effect="NoSchedule")]
_n = itertools.count()


@pytest.fixture(scope="module")
def root() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="taint-", dir="/tmp") as tmp:
        (Path(tmp) / "providers").mkdir()
        yield Path(tmp)


@pytest.fixture(scope="module")
async def sockets(root: Path) -> AsyncIterator[str]:
    """This driver's CSI Identity, a provider `azure` that answers, one `mute` that does not
    know the provider API (Version fails)."""
    servers = [aio.server() for _ in range(3)]
    csi_pb2_grpc.add_IdentityServicer_to_server(IdentityServicer(DRIVER_NAME, "t"), servers[0])
    provider_pb2_grpc.add_CSIDriverProviderServicer_to_server(FakeProvider(), servers[1])
    address = f"unix://{root}/csi.sock"
    servers[0].add_insecure_port(address)
    servers[1].add_insecure_port(f"unix://{root}/providers/azure.sock")
    servers[2].add_insecure_port(f"unix://{root}/providers/mute.sock")
    for s in servers:
        await s.start()
    yield address
    for s in servers:
        await s.stop(0)


@pytest.fixture(scope="module")
async def driver_client(
    admin_client: AsyncClient, driver_kubeconfig: Path
) -> AsyncIterator[AsyncClient]:
    for doc in manifests("rbac-startup-taint.yaml"):
        await admin_client.apply(from_dict(doc), field_manager="tests", force=True)  # type: ignore[arg-type]
    client = AsyncClient(config=KubeConfig.from_file(driver_kubeconfig))
    yield client
    await client.close()


async def _node(
    admin: AsyncClient, taints: list[Taint] | None, *, csinode: str | None = DRIVER_NAME
) -> str:
    name = f"taint-node-{next(_n)}"
    await admin.create(Node(metadata=ObjectMeta(name=name), spec=NodeSpec(taints=taints)))
    if csinode is not None:
        await _csinode(admin, name, csinode)
    return name


async def _csinode(admin: AsyncClient, node: str, driver: str) -> None:
    await admin.create(
        CSINode(
            metadata=ObjectMeta(name=node),
            spec=CSINodeSpec(drivers=[CSINodeDriver(name=driver, nodeID=node)]),
        )
    )


def _ours(effect: str = "NoSchedule") -> Taint:
    return Taint(key=TAINT_KEY, effect=effect)


def _taint(
    client: AsyncClient,
    node: str,
    root: Path,
    address: str,
    providers: tuple[str, ...] = ("azure",),
    **kw: Any,
) -> StartupTaint:
    return StartupTaint(
        client,
        node,
        DRIVER_NAME,
        address,
        ProviderClients((str(root / "providers"),), 4 << 20, 5),
        providers,
        Metrics(CollectorRegistry()),
        EventRecorder(client, "test", node),
        report_after=kw.pop("report_after", 0.3),
        **kw,
    )


async def _taints(admin: AsyncClient, node: str) -> list[tuple[str, str]]:
    """The node's taints but the one the API server adds to every new Node (admission
    TaintNodesByCondition: node.kubernetes.io/not-ready), which must stay too."""
    n = await admin.get(Node, node)
    taints = [(t.key, t.effect) for t in (n.spec.taints if n.spec else None) or []]
    assert ("node.kubernetes.io/not-ready", "NoSchedule") in taints
    return [t for t in taints if t[0] != "node.kubernetes.io/not-ready"]


async def _node_events(admin: AsyncClient, node: str, reason: str) -> list[Event]:
    return [
        e
        async for e in admin.list(Event, namespace="default")
        if e.involvedObject.kind == "Node" and e.involvedObject.name == node and e.reason == reason
    ]


def _gauge(t: StartupTaint, condition: str) -> float | None:
    return (
        t.waiting._metrics[(condition,)]._value.get()
        if (condition,) in t.waiting._metrics
        else None
    )  # type: ignore[attr-defined]


async def _runs_for(t: StartupTaint, seconds: float) -> None:
    """It keeps trying (does not return) for `seconds`."""
    task = asyncio.create_task(t.run())
    await asyncio.sleep(seconds)
    assert not task.done(), task
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


@pytest.mark.parametrize("effect", ["NoSchedule", "NoExecute"])
async def test_removes_its_taint_and_no_other(
    effect: str, admin_client: AsyncClient, driver_client: AsyncClient, root: Path, sockets: str
) -> None:
    node = await _node(
        admin_client, [OTHER[0], _ours(effect), Taint(key="x", effect="PreferNoSchedule")]
    )
    t = _taint(driver_client, node, root, sockets)
    await asyncio.wait_for(t.run(), 10)
    assert await _taints(admin_client, node) == [
        ("dedicated", "NoSchedule"),
        ("x", "PreferNoSchedule"),
    ]
    events = await _node_events(admin_client, node, REMOVED)
    assert len(events) == 1 and events[0].type == "Normal"
    assert t.removed and _gauge(t, "provider/azure") == 0


async def test_taint_absent_is_a_noop(
    admin_client: AsyncClient, driver_client: AsyncClient, root: Path, sockets: str
) -> None:
    node = await _node(admin_client, OTHER)
    before = (await admin_client.get(Node, node)).metadata.resourceVersion  # type: ignore[union-attr]
    t = _taint(driver_client, node, root, sockets)
    await asyncio.wait_for(t.run(), 10)
    assert (await admin_client.get(Node, node)).metadata.resourceVersion == before  # type: ignore[union-attr]
    assert not t.removed and await _node_events(admin_client, node, REMOVED) == []


async def test_node_missing_then_registered(
    admin_client: AsyncClient,
    driver_client: AsyncClient,
    root: Path,
    sockets: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    name = f"taint-late-{next(_n)}"
    t = _taint(driver_client, name, root, sockets)
    task = asyncio.create_task(t.run())
    with caplog.at_level(logging.INFO, logger="csi_driver.startup_taint"):
        await asyncio.sleep(1.5)
        assert not task.done()
        errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
        assert any(f"kept on node {name}" in m and "not found" in m for m in errors), errors
        assert _gauge(t, "node") == 1
        await admin_client.create(
            Node(metadata=ObjectMeta(name=name), spec=NodeSpec(taints=[_ours()]))
        )
        await _csinode(admin_client, name, DRIVER_NAME)
        await asyncio.wait_for(task, 15)
    assert await _taints(admin_client, name) == []


async def test_csinode_never_lists_the_driver(
    admin_client: AsyncClient,
    driver_client: AsyncClient,
    root: Path,
    sockets: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    node = await _node(admin_client, [_ours()], csinode="other.csi.example.com")
    t = _taint(driver_client, node, root, sockets)
    with caplog.at_level(logging.INFO, logger="csi_driver.startup_taint"):
        await _runs_for(t, 2.0)
    assert await _taints(admin_client, node) == [(TAINT_KEY, "NoSchedule")]
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and f"does not list driver {DRIVER_NAME}" in errors[0], errors
    assert "other.csi.example.com" in errors[0]
    events = await _node_events(admin_client, node, KEPT)
    assert len(events) == 1 and events[0].type == "Warning"
    assert f"does not list driver {DRIVER_NAME}" in (events[0].message or "")
    assert _gauge(t, "csinode") == 1 and _gauge(t, "provider/azure") == 0


@pytest.mark.parametrize("provider", ["absent", "mute"])
async def test_a_named_provider_never_answers(
    provider: str,
    admin_client: AsyncClient,
    driver_client: AsyncClient,
    root: Path,
    sockets: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """`absent`: no socket; `mute`: a socket whose server fails Version (Unimplemented)."""
    node = await _node(admin_client, [_ours()])
    t = _taint(driver_client, node, root, sockets, providers=("azure", provider))
    with caplog.at_level(logging.INFO, logger="csi_driver.startup_taint"):
        await _runs_for(t, 2.0)
    assert await _taints(admin_client, node) == [(TAINT_KEY, "NoSchedule")]
    assert _gauge(t, f"provider/{provider}") == 1 and _gauge(t, "provider/azure") == 0
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert any(f"provider {provider} does not answer Version" in m for m in errors), errors
    events = await _node_events(admin_client, node, KEPT)
    assert len(events) == 1 and f"provider {provider}" in (events[0].message or "")


async def test_patch_forbidden_names_the_cluster_role(
    control_plane: ControlPlane,
    admin_client: AsyncClient,
    root: Path,
    sockets: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    name = "taint-no-patch"
    rules = [
        {"apiGroups": [""], "resources": ["nodes"], "verbs": ["get"]},
        {"apiGroups": ["storage.k8s.io"], "resources": ["csinodes"], "verbs": ["get"]},
        {"apiGroups": [""], "resources": ["events"], "verbs": ["create"]},
    ]
    await service_account_with_rules(admin_client, name, rules)
    kubeconfig = await service_account_kubeconfig(
        control_plane, admin_client, "kube-system", name, root / "no-patch.kubeconfig"
    )
    client = AsyncClient(config=KubeConfig.from_file(kubeconfig))
    node = await _node(admin_client, [_ours()])
    try:
        t = _taint(client, node, root, sockets)
        with caplog.at_level(logging.INFO, logger="csi_driver.startup_taint"):
            await _runs_for(t, 3.0)
    finally:
        await client.close()
    assert await _taints(admin_client, node) == [(TAINT_KEY, "NoSchedule")]
    denied = [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.ERROR and 'cannot patch resource "nodes"' in r.getMessage()
    ]
    assert (
        denied
        and "ClusterRole secretproviderstartuptaint-role (daemonset/rbac-startup-taint.yaml)"
        in denied[0]
    ), denied


async def test_driver_process_removes_the_taint(
    admin_client: AsyncClient,
    driver_client: AsyncClient,
    driver_kubeconfig: Path,
    root: Path,
    sockets: str,
) -> None:
    """The flags, end to end: the driver process probes its own socket."""
    node = await _node(admin_client, [_ours("NoExecute"), OTHER[0]])
    d = DriverProcess(
        root,
        kubeconfig=driver_kubeconfig,
        provider_dirs=(root / "providers", root / "none"),
        node_id=node,
        name="taint-driver",
        extra=("--remove-startup-taint", "--startup-taint-providers=azure"),
    )
    await asyncio.to_thread(d.start)
    try:
        for _ in range(100):
            if await _taints(admin_client, node) == [("dedicated", "NoSchedule")]:
                break
            await asyncio.sleep(0.1)
        assert await _taints(admin_client, node) == [("dedicated", "NoSchedule")], d.logs()
        assert f"startup taint {TAINT_KEY} removed from node {node}" in d.logs()
    finally:
        d.stop()
