"""The real-node tier: one single-node cluster for the session (testbed/node.py), our
driver and provider as the node's plugins (host processes in the namespace, registered with
kubelet through testbed/registrar.py), the Key Vault emulator trusting this cluster's
service-account issuer. Pods are real: containerd + runc run them, kubelet mounts our volumes.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import os
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest
import yaml
from lightkube import AsyncClient
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Namespace, Pod, Secret
from lightkube.resources.storage_v1 import CSINode

from csi_driver.kube import SecretProviderClass
from testbed import images
from testbed.controlplane import (
    driver_token_kubeconfig,
    prepare_cluster,
    wait_default_service_account,
)
from testbed.driver import DriverProcess
from testbed.emulator import TENANT_ID, Emulator
from testbed.node import E2E_ISSUER, NODE_NAME, NODE_PEERS, Node, new_node
from testbed.peers import peer, require_programs
from testbed.provider import ProviderProcess, ours
from testbed.registrar import Registrar
from testbed.rundir import reap_stale, run_dir, unmount_under

DRIVER = "secrets-store.csi.k8s.io"
NAMESPACE = "e2e"
VAULT = "kv-e2e"
WI_CLIENT = "0e000001-0000-4000-8000-0000000000e1"
SP_CLIENT, SP_SECRET = "0e000002-0000-4000-8000-0000000000e2", "e2e-sp-secret"
NOROLE_CLIENT, NOROLE_SECRET = "0e000003-0000-4000-8000-0000000000e3", "e2e-norole-secret"
ROTATION_INTERVAL = "5s"
_names = itertools.count()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "filterwarnings", "ignore:`verify=<str>` is deprecated:DeprecationWarning"
    )


def unique(prefix: str) -> str:
    return f"{prefix}-{next(_names)}"


@dataclass
class Cluster:
    node: Node
    admin: AsyncClient
    driver: DriverProcess
    provider: ProviderProcess
    emulator: Emulator
    kubectl_cache: Path

    def kubectl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                str(peer("kubectl")),  # built with the other 1.37 peers, not the host's
                f"--kubeconfig={self.node.cp.admin_kubeconfig}",
                f"--cache-dir={self.kubectl_cache}",
                *args,
            ],
            check=check,
            capture_output=True,
            text=True,
            timeout=60,
        )

    def exec(
        self, pod: str, *cmd: str, namespace: str = NAMESPACE
    ) -> subprocess.CompletedProcess[str]:
        """`kubectl exec` through the apiserver, kubelet and containerd's streaming server."""
        return self.kubectl("exec", "-n", namespace, pod, "--", *cmd, check=False)

    def target(self, pod: Pod, volume: str = "secrets-store") -> Path:
        assert pod.metadata is not None and pod.metadata.uid is not None
        return self.node.pod_volume(pod.metadata.uid, volume)


def _seed_world(emulator: Emulator, jwks: dict[str, Any]) -> None:
    emulator.seed(
        {
            "issuers": [{"issuer": E2E_ISSUER, "jwks": jwks}],
            "identities": [
                {
                    "name": "e2e-wi",
                    "type": "application",
                    "clientId": WI_CLIENT,
                    "federatedCredentials": [
                        {
                            "issuer": E2E_ISSUER,
                            "subject": f"system:serviceaccount:{NAMESPACE}:default",
                            "audience": "api://AzureADTokenExchange",
                        }
                    ],
                },
                {
                    "name": "e2e-sp",
                    "type": "servicePrincipal",
                    "clientId": SP_CLIENT,
                    "clientSecret": SP_SECRET,
                },
                {
                    "name": "e2e-norole",
                    "type": "servicePrincipal",
                    "clientId": NOROLE_CLIENT,
                    "clientSecret": NOROLE_SECRET,
                },
            ],
            "vaults": [
                {
                    "name": VAULT,
                    "tenant": TENANT_ID,
                    "roleAssignments": [
                        {"identity": ident, "role": role}
                        for ident in ("e2e-wi", "e2e-sp")
                        for role in ("Key Vault Secrets User", "Key Vault Reader")
                    ],
                    "secrets": [
                        {"name": "db-password", "value": "hunter2-from-keyvault"},
                        {"name": "username", "value": "app-user"},
                        {"name": "rotating", "value": "rot-v1"},
                    ],
                    "keys": [{"name": "signing-key", "kty": "RSA", "size": 2048}],
                    "certificates": [
                        {
                            "name": "tls-cert",
                            "generate": {
                                "subject": "CN=e2e.example.test",
                                "kty": "RSA",
                                "size": 2048,
                                "dnsNames": ["e2e.example.test"],
                            },
                            "contentType": "application/x-pem-file",
                        }
                    ],
                }
            ],
        }
    )


@pytest.fixture(scope="package")
def vault_resolves() -> Iterator[None]:
    """tests/netns-run's /etc/hosts is a private temp file: add this tier's vault to it."""
    if os.environ.get("NETNS_RUN_INSIDE") != "1":
        pytest.fail("run inside tests/netns-run", pytrace=False)
    hosts = Path("/etc/hosts")
    before = hosts.read_text()
    hosts.write_text(before + f"127.0.0.1 {VAULT}.vault.azure.net\n")
    yield
    hosts.write_text(hosts.read_text().replace(f"127.0.0.1 {VAULT}.vault.azure.net\n", ""))


@pytest.fixture(scope="package")  # torn down when the tier ends, not with the whole suite
async def cluster(emulator: Emulator, vault_resolves: None) -> AsyncIterator[Cluster]:
    require_programs(
        "containerd", "containerd-shim-runc-v2", "runc", "ctr", "busybox", who="real-node tier"
    )
    bins = {n: peer(n) for n in NODE_PEERS}
    started = time.monotonic()
    for stale in reap_stale():
        print(f"\n[e2e] cleaned up after a run killed without teardown: {stale}")
    tmp = run_dir()
    node = new_node(tmp, bins)
    cp = node.cp
    registrar: Registrar | None = None
    driver: DriverProcess | None = None
    provider: ProviderProcess | None = None
    admin: AsyncClient | None = None
    try:
        node.start_runtime()
        cp.start()
        admin = await prepare_cluster(cp)
        node.start_scheduler()
        jwks = httpx.get(
            f"{cp.server}/openid/v1/jwks",
            headers={"Authorization": f"Bearer {cp.admin_token}"},
            verify=str(cp.ca_file),
        ).json()
        _seed_world(emulator, jwks)
        # the node's plugins: provider, driver (its own ServiceAccount), registrar
        providers = tmp / "providers"
        providers.mkdir()
        sock = providers / "azure.sock"
        provider = ours(sock, log=tmp / "provider.log")
        provider.start()
        kubeconfig = await driver_token_kubeconfig(cp, admin)
        driver = node.plugin_driver(kubeconfig, providers, ROTATION_INTERVAL)
        driver.start()
        node.start_kubelet()  # before the registrar's threads: no gRPC server across fork()
        registrar = node.register(driver)
        await _wait_node_ready(node, admin, registrar)
        await _namespace(admin)
        print(f"\n[e2e] node up in {time.monotonic() - started:.1f}s ({tmp})")
        yield Cluster(node, admin, driver, provider, emulator, tmp / "kubectl-cache")
    finally:
        leftover = await _delete_pods(admin) if admin is not None else None
        try:
            node.stop()
        finally:
            if registrar is not None:
                registrar.stop()
            if driver is not None and driver.proc is not None:
                driver.stop()
            if provider is not None:
                provider.stop()
            if admin is not None:
                await admin.close()
            cp.stop()
            unmount_under(tmp)
            shutil.rmtree(tmp, ignore_errors=True)
        if leftover is not None:
            raise AssertionError(f"e2e teardown: {leftover}")


async def _wait_node_ready(node: Node, admin: AsyncClient, registrar: Registrar) -> None:
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        node.check_alive()
        try:
            csinode = await admin.get(CSINode, NODE_NAME)
            drivers = [d.name for d in (csinode.spec.drivers or [])]
            if DRIVER in drivers and registrar.registered.is_set():
                return
        except Exception:
            pass
        if registrar.errors:
            raise RuntimeError(f"plugin registration failed: {registrar.errors}")
        await asyncio.sleep(0.2)
    raise TimeoutError(f"node not ready:\n{node.log('kubelet')[-4000:]}")


async def _namespace(admin: AsyncClient) -> None:
    await admin.create(Namespace(metadata=ObjectMeta(name=NAMESPACE)))
    await wait_default_service_account(admin, NAMESPACE, attempts=600)


async def _delete_pods(admin: AsyncClient) -> str | None:
    """Pods go first (kubelet unpublishes their volumes) so nothing stays mounted. Returns
    what went wrong (pods left behind, an API error) so the teardown can report it after the
    rest of the clean-up has run."""
    try:
        pods = [p async for p in admin.list(Pod, namespace=NAMESPACE)]
        for p in pods:
            assert p.metadata is not None and p.metadata.name is not None
            await admin.delete(Pod, p.metadata.name, namespace=NAMESPACE, grace_period=0)
        left: list[str] = []
        for _ in range(100):
            left = [
                str(p.metadata.name)
                async for p in admin.list(Pod, namespace=NAMESPACE)
                if p.metadata is not None
            ]
            if not left:
                return None
            await asyncio.sleep(0.2)
        return f"pods still present 20 s after deletion: {left}"
    except Exception as e:
        return f"deleting the test pods failed: {type(e).__name__}: {e}"


# -- helpers for the stories ------------------------------------------------------------


SLEEP = "trap 'exit 0' TERM; sleep 3600 & wait"


def objects(*items: dict[str, Any]) -> str:
    return yaml.safe_dump({"array": [yaml.safe_dump(i) for i in items]})


async def create_spc(
    admin: AsyncClient,
    parameters: dict[str, str],
    *,
    secret_objects: list[dict[str, Any]] | None = None,
    name: str | None = None,
) -> str:
    name = name or unique("spc")
    spec: dict[str, Any] = {"provider": "azure", "parameters": parameters}
    if secret_objects is not None:
        spec["secretObjects"] = secret_objects
    await admin.create(
        SecretProviderClass.from_dict(
            {
                "apiVersion": "secrets-store.csi.x-k8s.io/v1",
                "kind": "SecretProviderClass",
                "metadata": {"name": name, "namespace": NAMESPACE},
                "spec": spec,
            }
        )
    )
    return name


async def create_vault_spc(
    admin: AsyncClient,
    *items: dict[str, Any],
    secret_objects: list[dict[str, Any]] | None = None,
) -> str:
    """An SPC for this tier's vault and tenant with these `objects` entries."""
    parameters = {"keyvaultName": VAULT, "tenantId": TENANT_ID, "objects": objects(*items)}
    return await create_spc(admin, parameters, secret_objects=secret_objects)


async def create_sp_secret(
    admin: AsyncClient, client_id: str = SP_CLIENT, secret: str = SP_SECRET
) -> str:
    name = unique("kv-creds")
    await admin.create(
        Secret(
            metadata=ObjectMeta(name=name, namespace=NAMESPACE),
            data={
                "clientid": base64.b64encode(client_id.encode()).decode(),
                "clientsecret": base64.b64encode(secret.encode()).decode(),
            },
        )
    )
    return name


def pod_manifest(
    name: str,
    spc: str,
    *,
    secret_ref: str | None = None,
    env: list[dict[str, Any]] | None = None,
    command: str = SLEEP,
) -> dict[str, Any]:
    attrs: dict[str, Any] = {"secretProviderClass": spc}
    csi: dict[str, Any] = {"driver": DRIVER, "readOnly": True, "volumeAttributes": attrs}
    if secret_ref is not None:
        csi["nodePublishSecretRef"] = {"name": secret_ref}
    container: dict[str, Any] = {
        "name": "app",
        "image": images.BUSYBOX_IMAGE,
        "imagePullPolicy": "Never",
        "command": ["/bin/sh", "-c", command],
        "volumeMounts": [
            {"name": "secrets-store", "mountPath": "/mnt/secrets-store", "readOnly": True}
        ],
    }
    if env:
        container["env"] = env
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": NAMESPACE, "labels": {"app": name}},
        "spec": {
            "hostNetwork": True,
            "terminationGracePeriodSeconds": 5,
            "tolerations": [{"operator": "Exists"}],
            "containers": [container],
            "volumes": [{"name": "secrets-store", "csi": csi}],
        },
    }


def deployment_manifest(
    name: str, template: dict[str, Any], annotations: dict[str, str] | None = None
) -> dict[str, Any]:
    """2 replicas, rolling one at a time (one surge, one unavailable), selected by `app`."""
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": NAMESPACE, "annotations": annotations or {}},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": name}},
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxUnavailable": 1, "maxSurge": 1},
            },
            "template": template,
        },
    }


async def run_pod(admin: AsyncClient, manifest: dict[str, Any], within: float = 60) -> Pod:
    """Create the pod and wait until it is Running; on timeout, say why (events)."""
    pod = await admin.create(Pod.from_dict(manifest))
    name = manifest["metadata"]["name"]
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        pod = await admin.get(Pod, name, namespace=NAMESPACE)
        if pod.status is not None and pod.status.phase == "Running":
            return pod
        await asyncio.sleep(0.2)
    raise TimeoutError(f"pod {name} not Running: {await pod_events(admin, name)}\n{pod.status}")


async def pod_events(admin: AsyncClient, pod: str) -> list[str]:
    from lightkube.resources.core_v1 import Event

    return [
        f"{e.type} {e.reason}: {e.message}"
        async for e in admin.list(Event, namespace=NAMESPACE)
        if e.involvedObject.name == pod
    ]


def dumps(value: Any) -> str:
    return json.dumps(value)
