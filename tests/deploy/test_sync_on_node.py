"""The chart's SecretSync controller on a real node: kubelet 1.37, containerd and runc (the
tests/e2e node), the images `make images` builds, the session's Key Vault emulator.

`helm template` with syncController.enabled gives the ServiceAccount, RBAC, SecretSync CRD,
admission policies and the Deployment `secrets-store-sync-controller` (manager + our provider
as a sidecar on /provider/azure.sock in an emptyDir); all are applied as rendered, except, for
this node:
- hostNetwork (no CNI network here, docs/e2e.md), and so one replica: on the node's network
  two replicas' probe and metrics ports (8081, 8085, 8989, 8898) would collide, and the
  scheduler places no second pod declaring the same ports on the one node. The takeover is
  then by the replacement pod the Deployment makes, after the killed leader's Lease expires;
- the API server on loopback (no Service network): KUBERNETES_SERVICE_HOST/PORT on the manager;
- the emulator's CA for the provider (a ConfigMap, SSL_CERT_FILE), where Key Vault's public
  CA would be trusted from the image;
- values: rotationPollInterval 3s, a toleration for the node's not-ready taint.

Proven: the Secret appears with the right data, labels and owner, under the chart's admission
policies (shown in force); a change in Key Vault reaches it within the poll; the leader's pod
deleted → it releases the Lease and the new pod takes it before it could expire; the leader
killed (SIGKILL, pod force-deleted) → the new pod takes the Lease once it expires; changes made
meanwhile are caught up and a further change syncs; the pod Ready by its probes with nothing
restarted, its probe and metrics ports answering; the pod and its processes as run: non-root,
read-only root, no privilege escalation, no capability, default seccomp, no hostPath, and no
Kubernetes token in the provider sidecar (the chart gave it the controller's: fixed).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx2 as httpx
import pytest
from lightkube import ApiError, AsyncClient, codecs
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.apps_v1 import Deployment
from lightkube.resources.coordination_v1 import Lease
from lightkube.resources.core_v1 import ConfigMap, Namespace, Pod, Secret, ServiceAccount

from csi_driver.kube import SecretProviderClass
from sync_controller.api import CONTROLLER_LABEL, NAME_LABEL, SecretSync
from sync_controller.leader import LEASE_NAME, Timing
from testbed.emulator import TENANT_ID, Emulator
from testbed.mount_attributes import objects_yaml
from testbed.node import E2E_ISSUER
from testbed.peers import peer
from testbed.secretsync import secretsync_body, spc_body
from tests.sync.conftest import policies_enforced

from .render import Doc, container, find, render
from .test_on_node import (
    DRIVER_IMAGE,
    PROVIDER_IMAGE,
    World,
    assert_confined,
    container_pid,
    node_with_images,
    service_account_dir_in_pod,
)

pytestmark = pytest.mark.peers

SYSTEM = "kube-system"
NAMESPACE = "syncnode"
VAULT = "kv-syncnode"  # in tests/netns-hosts
CLIENT = "0e000001-0000-4000-8000-0000000005b1"
AUDIENCE = "api://AzureADTokenExchange"
POLL = 3.0
DEPLOYMENT = "secrets-store-sync-controller"
SELECTOR: dict[str, Any] = {"app": DEPLOYMENT}
NONROOT = 65532
CA_DIR = "/etc/emulator-ca"
MANAGER_MARKER = "secrets-store-sync-controller"
PROVIDER_MARKER = "secrets-store-provider-azure"


def chart_docs() -> list[Doc]:
    """The chart's objects for the controller (syncController.enabled), nothing of the driver."""
    values = {
        "syncController": {
            "enabled": True,
            "replicas": 1,
            "rotationPollInterval": f"{POLL:g}s",
            "tolerations": [{"operator": "Exists"}],
        }
    }
    docs = [
        d
        for d in render(peer("helm"), values, namespace=SYSTEM)
        if "sync-controller" in d["metadata"]["name"]
        or d["metadata"]["name"] == "secretsyncs.secret-sync.x-k8s.io"
    ]
    kinds = sorted(d["kind"] for d in docs)
    assert kinds == sorted(
        ["ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"]
        + ["CustomResourceDefinition", "Deployment"]
        + ["ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"] * 4
    ), kinds
    return docs


def on_this_node(docs: list[Doc], apiserver: str) -> list[Doc]:
    """The Deployment on the node's network, the API server's loopback address, and the
    emulator's CA for the provider (see the module's docstring)."""
    deployment = find(docs, "Deployment", DEPLOYMENT)
    pod = deployment["spec"]["template"]["spec"]
    pod["hostNetwork"] = True
    pod["dnsPolicy"] = "ClusterFirstWithHostNet"
    host, port = apiserver.removeprefix("https://").rsplit(":", 1)
    container(deployment, "manager")["env"] += [
        {"name": "KUBERNETES_SERVICE_HOST", "value": host},
        {"name": "KUBERNETES_SERVICE_PORT", "value": port},
    ]
    provider = container(deployment, "provider-azure")
    ca = f"{CA_DIR}/ca.pem"
    provider["env"] = [*provider.get("env", []), *_env(SSL_CERT_FILE=ca, REQUESTS_CA_BUNDLE=ca)]
    provider["volumeMounts"].append({"name": "emulator-ca", "mountPath": CA_DIR, "readOnly": True})
    pod["volumes"].append({"name": "emulator-ca", "configMap": {"name": "emulator-ca"}})
    return docs


def _env(**values: str) -> list[dict[str, str]]:
    return [{"name": k, "value": v} for k, v in values.items()]


def _seed(emulator: Emulator, jwks: dict[str, Any]) -> None:
    emulator.seed(
        {
            "issuers": [{"issuer": E2E_ISSUER, "jwks": jwks}],
            "identities": [
                {
                    "name": "syncnode-wi",
                    "type": "application",
                    "clientId": CLIENT,
                    "federatedCredentials": [
                        {
                            "issuer": E2E_ISSUER,
                            "subject": f"system:serviceaccount:{NAMESPACE}:app",
                            "audience": AUDIENCE,
                        }
                    ],
                }
            ],
            "vaults": [
                {
                    "name": VAULT,
                    "tenant": TENANT_ID,
                    "roleAssignments": [
                        {"identity": "syncnode-wi", "role": "Key Vault Secrets User"}
                    ],
                    "secrets": [
                        {"name": "db-password", "value": "from-the-node-1"},
                        {"name": "username", "value": "app-user"},
                    ],
                }
            ],
        }
    )


@pytest.fixture(scope="module")
async def world(emulator: Emulator) -> AsyncIterator[World]:
    async with node_with_images(PROVIDER_IMAGE, DRIVER_IMAGE) as w:
        jwks = httpx.get(
            f"{w.cp.server}/openid/v1/jwks",
            headers={"Authorization": f"Bearer {w.cp.admin_token}"},
            verify=str(w.cp.ca_file),
        ).json()
        _seed(emulator, jwks)
        try:
            yield w
        finally:
            await _delete_controller(w.admin)


async def _delete_controller(admin: AsyncClient) -> None:
    with contextlib.suppress(ApiError):
        await admin.delete(Deployment, DEPLOYMENT, namespace=SYSTEM)
    for _ in range(150):
        pods = [p async for p in admin.list(Pod, namespace=SYSTEM, labels=SELECTOR)]
        if not pods:
            return
        for p in pods:
            assert p.metadata is not None and p.metadata.name is not None
            with contextlib.suppress(ApiError):
                await admin.delete(Pod, p.metadata.name, namespace=SYSTEM, grace_period=0)
        await asyncio.sleep(0.2)


async def until(check: Callable[[], Awaitable[Any]], within: float, what: str, world: World) -> Any:
    deadline = time.monotonic() + within
    last: Any = None
    while time.monotonic() < deadline:
        world.node.check_alive("kubelet")
        last = await check()
        if last:
            return last
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}; last: {last!r}\n{_pod_logs(world)}")


def _pod_logs(world: World) -> str:
    """The controller pods' container logs (kubelet's podLogsDir), tails."""
    out = []
    for log in sorted(world.node.pod_logs.glob(f"{SYSTEM}_{DEPLOYMENT}-*/*/*.log")):
        out.append(f"--- {log.relative_to(world.node.pod_logs)}\n{log.read_text()[-2000:]}")
    return "\n".join(out) or world.node.log("kubelet")[-3000:]


async def _apply_app_objects(admin: AsyncClient) -> None:
    """The user's side: a namespace, the workload identity's ServiceAccount, an SPC and a
    SecretSync."""
    await admin.create(Namespace(metadata=ObjectMeta(name=NAMESPACE)))
    await admin.create(ServiceAccount(metadata=ObjectMeta(name="app", namespace=NAMESPACE)))
    objects = objects_yaml(
        *({"objectName": o, "objectType": "secret"} for o in ("db-password", "username"))
    )
    spc = spc_body("db", NAMESPACE, vault=VAULT, client_id=CLIENT, objects=objects)
    await admin.create(SecretProviderClass.from_dict(spc))
    sync = secretsync_body(
        "db",
        NAMESPACE,
        "db",
        {"db-password": "password", "username": "user"},
        service_account="app",
        secret_object={"labels": {"app": "web"}},
    )
    await admin.create(SecretSync.from_dict(sync))


async def _secret_data(admin: AsyncClient) -> dict[str, str] | None:
    try:
        secret = await admin.get(Secret, "db", namespace=NAMESPACE)
    except ApiError as e:
        if e.status.code == 404:
            return None
        raise
    return {k: base64.b64decode(v).decode() for k, v in (secret.data or {}).items()}


async def _has_value(admin: AsyncClient, value: str) -> bool:
    data = await _secret_data(admin)
    return data is not None and data.get("password") == value


async def _holder(admin: AsyncClient) -> str:
    try:
        lease = await admin.get(Lease, LEASE_NAME, namespace=SYSTEM)
    except ApiError:
        return ""
    return (lease.spec.holderIdentity or "") if lease.spec else ""


async def _running_pod(admin: AsyncClient, exclude: str = "") -> Pod | None:
    async for pod in admin.list(Pod, namespace=SYSTEM, labels=SELECTOR):
        assert pod.metadata is not None and pod.status is not None
        if pod.metadata.name == exclude or pod.metadata.deletionTimestamp is not None:
            continue
        statuses = pod.status.containerStatuses or []
        if len(statuses) == 2 and all(s.state and s.state.running for s in statuses):
            return pod
    return None


async def _ready_pod(admin: AsyncClient) -> Pod | None:
    """A pod Ready by its probes, neither container restarted."""
    pod = await _running_pod(admin)
    if pod is None or pod.status is None:
        return None
    ready = any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions or [])
    restarts = [s.restartCount for s in pod.status.containerStatuses or []]
    assert restarts == [0, 0], restarts
    return pod if ready else None


def check_endpoints() -> None:
    """On the node's network: the manager's probe and metrics (the chart's ports 8081, 8085),
    the provider's health and metrics (8989, 8898), as the probes and a scraper reach them."""
    with httpx.Client(timeout=5) as http:
        for url in ("http://127.0.0.1:8081/healthz", "http://127.0.0.1:8989/healthz"):
            assert http.get(url).status_code == 200, url
        manager = http.get("http://127.0.0.1:8085/metrics").text
        assert any(
            line.startswith("secretsync_reconcile_total{") and 'result="success"' in line
            for line in manager.splitlines()
        ), manager[-2000:]
        assert "# TYPE keyvault_request histogram" in http.get("http://127.0.0.1:8898/metrics").text


def check_pod_as_run(pod: Pod) -> None:
    """The running pod's spec: what the chart asked for, as the API server kept it."""
    assert pod.spec is not None
    assert not pod.spec.hostPID and not pod.spec.hostIPC
    assert all(v.hostPath is None for v in pod.spec.volumes or []), pod.spec.volumes
    assert pod.spec.securityContext is not None
    assert pod.spec.securityContext.runAsNonRoot is True
    for c in pod.spec.containers:
        sc = c.securityContext
        assert sc is not None, c.name
        assert sc.runAsNonRoot is True and sc.runAsUser == NONROOT, c.name
        assert sc.readOnlyRootFilesystem is True, c.name
        assert sc.allowPrivilegeEscalation is False and sc.privileged is False, c.name
        assert sc.capabilities is not None and sc.capabilities.drop == ["ALL"], c.name
        assert not sc.capabilities.add, c.name
    # the provider is not given the controller's Kubernetes token: only the cluster CA
    sa_dir = "/var/run/secrets/kubernetes.io/serviceaccount"
    (provider,) = [c for c in pod.spec.containers if c.name == "provider-azure"]
    (mount,) = [m for m in provider.volumeMounts or [] if m.mountPath == sa_dir]
    (volume,) = [v for v in pod.spec.volumes or [] if v.name == mount.name]
    assert volume.configMap is not None and volume.configMap.name == "kube-root-ca.crt"


def check_processes_as_run() -> None:
    """Both containers' processes: uid 65532, no capability, no new privileges, seccomp,
    read-only root; the provider sees the cluster CA alone where a token would be."""
    for marker in (MANAGER_MARKER, PROVIDER_MARKER):
        assert_confined(container_pid(marker), NONROOT)
    names, _ = service_account_dir_in_pod(PROVIDER_MARKER)
    assert names == ["ca.crt"]
    manager_names, _ = service_account_dir_in_pod(MANAGER_MARKER)
    assert "token" in manager_names


async def test_chart_controller_syncs_and_fails_over(world: World, emulator: Emulator) -> None:
    admin = world.admin
    ca = emulator.ca_path.read_text()
    await admin.apply(
        ConfigMap(metadata=ObjectMeta(name="emulator-ca", namespace=SYSTEM), data={"ca.pem": ca}),
        field_manager="tests",
    )
    await _apply_app_objects(admin)
    applied = time.monotonic()
    for doc in on_this_node(chart_docs(), world.cp.server):
        await admin.apply(codecs.from_dict(doc), field_manager="tests", force=True)

    # the first Secret: data, labels, owner
    await until(lambda: _secret_data(admin), 120, "the first Secret", world)
    first_secret = time.monotonic() - applied
    secret = await admin.get(Secret, "db", namespace=NAMESPACE)
    assert await _secret_data(admin) == {"password": "from-the-node-1", "user": "app-user"}
    assert secret.metadata is not None
    labels = secret.metadata.labels or {}
    assert labels[CONTROLLER_LABEL] == "" and labels[NAME_LABEL] == "db" and labels["app"] == "web"
    sync = await admin.get(SecretSync, "db", namespace=NAMESPACE)
    (owner,) = secret.metadata.ownerReferences or []
    assert sync.metadata is not None
    assert (owner.kind, owner.name, owner.uid) == ("SecretSync", "db", sync.metadata.uid)
    assert owner.apiVersion == "secret-sync.x-k8s.io/v1alpha1"

    # the chart's admission policies are in force for the controller's ServiceAccount
    await policies_enforced(world.cp, admin, NAMESPACE)

    # the pod and its processes as run; its probes pass, its endpoints answer
    leader = await until(lambda: _ready_pod(admin), 60, "the controller pod Ready", world)
    assert leader.metadata is not None and leader.metadata.name is not None
    check_pod_as_run(leader)
    await asyncio.to_thread(check_endpoints)
    await asyncio.to_thread(check_processes_as_run)
    holder = await _holder(admin)
    assert holder.startswith(f"{leader.metadata.name}_"), holder

    # a change in Key Vault reaches the Secret within the poll
    emulator.set_secret(VAULT, "db-password", "from-the-node-2")
    changed = time.monotonic()
    await until(lambda: _has_value(admin, "from-the-node-2"), POLL + 3, "the change", world)
    followed = time.monotonic() - changed

    # the leader's pod deleted (SIGTERM, the chart's grace period): it releases the Lease, the
    # Deployment's new pod takes it as soon as it runs; a change made meanwhile is caught up
    emulator.set_secret(VAULT, "db-password", "from-the-node-3")
    started = time.monotonic()
    await admin.delete(Pod, leader.metadata.name, namespace=SYSTEM)
    leader = await _taken_over(world, leader, "deleted")
    graceful = time.monotonic() - started
    # sooner than the Lease could expire: the deleted leader released it (SIGTERM reached the
    # manager, PID 1 in its container)
    assert graceful < Timing().duration, f"{graceful:.1f}s: the Lease was not released"
    await until(lambda: _has_value(admin, "from-the-node-3"), POLL + 5, "the catch-up", world)

    # the leader killed (SIGKILL, the pod force-deleted: no release): the new pod waits out
    # the Lease, then catches up; a change after that follows within the poll
    assert leader.metadata is not None and leader.metadata.name is not None
    os.kill(await asyncio.to_thread(container_pid, MANAGER_MARKER), signal.SIGKILL)
    started = time.monotonic()
    await admin.delete(Pod, leader.metadata.name, namespace=SYSTEM, grace_period=0)
    emulator.set_secret(VAULT, "db-password", "from-the-node-4")
    await _taken_over(world, leader, "killed")
    killed = time.monotonic() - started
    await until(lambda: _has_value(admin, "from-the-node-4"), POLL + 5, "the catch-up", world)
    emulator.set_secret(VAULT, "db-password", "from-the-node-5")
    changed = time.monotonic()
    await until(lambda: _has_value(admin, "from-the-node-5"), POLL + 3, "a change after", world)
    after = time.monotonic() - changed
    print(
        f"\n[sync-on-node] first Secret {first_secret:.1f}s after apply; a change followed in "
        f"{followed:.1f}s (poll {POLL:g}s); Lease taken over {graceful:.1f}s after the leader's "
        f"pod was deleted, {killed:.1f}s after it was killed; a change after that followed in "
        f"{after:.1f}s"
    )


async def _taken_over(world: World, old: Pod, how: str) -> Pod:
    """The Deployment's new pod running and holding the Lease."""
    assert old.metadata is not None and old.metadata.name is not None
    gone = old.metadata.name
    new: Pod = await until(
        lambda: _running_pod(world.admin, exclude=gone), 60, f"a pod after the {how} one", world
    )
    assert new.metadata is not None
    identity = f"{new.metadata.name}_"

    async def holds() -> bool:
        return (await _holder(world.admin)).startswith(identity)

    await until(holds, 45, f"the Lease taken from the {how} leader", world)
    return new
