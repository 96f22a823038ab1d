"""etcd + kube-apiserver (+ kube-controller-manager) on loopback, for tests.

RBAC on, a static admin token, a service-account signing key (TokenRequest works), the
project's CRDs, CSIDriver and RBAC from daemonset/ applied (prepare_cluster), kubeconfigs
carrying a ServiceAccount's own token. Start takes ~5 s.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import httpx2 as httpx
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from lightkube import AsyncClient, KubeConfig, codecs
from lightkube.generic_resource import create_global_resource
from lightkube.models.authentication_v1 import TokenRequestSpec
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import ServiceAccount, ServiceAccountToken
from lightkube.resources.rbac_authorization_v1 import (
    ClusterRole,
    ClusterRoleBinding,
    Role,
    RoleBinding,
)

from testbed import REPO
from testbed.ports import free_port

DAEMONSET = REPO / "daemonset"
ISSUER = "https://kubernetes.default.svc.cluster.local"
CRD = create_global_resource(
    "apiextensions.k8s.io", "v1", "CustomResourceDefinition", "customresourcedefinitions"
)
DRIVER_SA = ("kube-system", "secrets-store-csi-driver")


def write_kubeconfig(path: Path, server: str, ca_file: Path, token: str) -> Path:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": "test", "cluster": {"server": server, "certificate-authority": str(ca_file)}}
        ],
        "users": [{"name": "user", "user": {"token": token}}],
        "contexts": [{"name": "test", "context": {"cluster": "test", "user": "user"}}],
        "current-context": "test",
    }
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    return path


def _program(p: subprocess.Popen[bytes]) -> str:
    return str(p.args[0]) if isinstance(p.args, list) else str(p.args)


@dataclass
class ControlPlane:
    workdir: Path
    etcd_bin: Path
    apiserver_bin: Path
    controller_manager_bin: Path | None = None
    admin_token: str = field(default_factory=lambda: secrets.token_hex(16))
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    server: str = ""
    ca_file: Path = Path()
    admin_kubeconfig: Path = Path()

    def _spawn(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        log = open(self.workdir / f"{name}.log", "wb")  # noqa: SIM115 (closed with the process)
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir)
        self.procs.append(proc)
        return proc

    def _wait(self, url: str, what: str, timeout: float = 60.0, **kw: object) -> None:
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            for p in self.procs:
                if p.poll() is not None:
                    raise RuntimeError(f"{what}: a control-plane process exited ({_program(p)})")
            try:
                r = httpx.get(url, timeout=2, **kw)  # type: ignore[arg-type]
                if r.status_code == 200:
                    return
                last = f"{r.status_code} {r.text[:200]}"
            except httpx.HTTPError as e:
                last = str(e)
            time.sleep(0.1)
        raise TimeoutError(f"{what} not ready: {last}")

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        etcd_client = self._start_etcd()
        sa_key, sa_pub = self._signing_key()
        tokens = self.workdir / "tokens.csv"
        tokens.write_text(f'{self.admin_token},admin,admin-uid,"system:masters"\n')
        port = free_port()
        self.server = f"https://127.0.0.1:{port}"
        self._wait(f"http://127.0.0.1:{etcd_client}/health", "etcd")
        self._spawn(
            "kube-apiserver",
            [
                str(self.apiserver_bin),
                f"--etcd-servers=http://127.0.0.1:{etcd_client}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={port}",
                "--endpoint-reconciler-type=none",
                f"--cert-dir={self.workdir / 'certs'}",
                "--authorization-mode=Node,RBAC",
                f"--token-auth-file={tokens}",
                f"--service-account-key-file={sa_pub}",
                f"--service-account-signing-key-file={sa_key}",
                f"--service-account-issuer={ISSUER}",
                f"--api-audiences={ISSUER}",
                "--service-cluster-ip-range=10.96.0.0/16",
                "--enable-priority-and-fairness=false",
                "--storage-media-type=application/json",
                "--allow-privileged=true",
            ],
        )
        self._wait_apiserver()
        self.admin_kubeconfig = write_kubeconfig(
            self.workdir / "admin.kubeconfig", self.server, self.ca_file, self.admin_token
        )

    def _start_etcd(self) -> int:
        """Starts etcd; returns its client port."""
        etcd_client, etcd_peer = free_port(), free_port()
        self._spawn(
            "etcd",
            [
                str(self.etcd_bin),
                f"--data-dir={self.workdir / 'etcd'}",
                f"--listen-client-urls=http://127.0.0.1:{etcd_client}",
                f"--advertise-client-urls=http://127.0.0.1:{etcd_client}",
                f"--listen-peer-urls=http://127.0.0.1:{etcd_peer}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{etcd_peer}",
                f"--initial-cluster=default=http://127.0.0.1:{etcd_peer}",
                "--log-level=warn",
                "--unsafe-no-fsync",
            ],
        )
        return etcd_client

    def _signing_key(self) -> tuple[Path, Path]:
        """The service-account signing key pair (private, public), as PEM files."""
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        sa_key = self.workdir / "sa.key"
        sa_key.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.TraditionalOpenSSL,
                serialization.NoEncryption(),
            )
        )
        sa_pub = self.workdir / "sa.pub"
        sa_pub.write_bytes(
            key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
        return sa_key, sa_pub

    def _wait_apiserver(self) -> None:
        self.ca_file = self.workdir / "certs" / "apiserver.crt"
        deadline = time.monotonic() + 30
        while not self.ca_file.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        self._wait(
            f"{self.server}/readyz",
            "kube-apiserver",
            headers={"Authorization": f"Bearer {self.admin_token}"},
            verify=str(self.ca_file),
        )

    def start_controller_manager(self) -> None:
        """After the CRDs exist (else garbage collection waits ~30 s for discovery)."""
        if self.controller_manager_bin is None:
            return
        w = self.workdir
        self._spawn(
            "kube-controller-manager",
            [
                str(self.controller_manager_bin),
                f"--kubeconfig={self.admin_kubeconfig}",
                f"--authentication-kubeconfig={self.admin_kubeconfig}",
                f"--authorization-kubeconfig={self.admin_kubeconfig}",
                f"--service-account-private-key-file={w / 'sa.key'}",
                f"--root-ca-file={self.ca_file}",
                "--controllers=*,-pod-garbage-collector-controller,-node-lifecycle-controller,"
                "-node-ipam-controller,-persistentvolume-attach-detach-controller,"
                "-persistentvolume-binder-controller,-taint-eviction-controller",
                "--bind-address=127.0.0.1",
                f"--secure-port={free_port()}",
                "--leader-elect=false",
                "--concurrent-gc-syncs=5",
            ],
        )

    def jwks(self) -> dict[str, object]:
        """The service-account issuer's keys, for an Entra ID stand-in to trust (as Entra ID
        trusts a cluster's OIDC issuer)."""
        keys: dict[str, object] = httpx.get(
            f"{self.server}/openid/v1/jwks",
            headers={"Authorization": f"Bearer {self.admin_token}"},
            verify=str(self.ca_file),
        ).json()
        return keys

    def stop(self) -> None:
        for p in reversed(self.procs):
            with contextlib.suppress(ProcessLookupError):
                p.terminate()
        for p in reversed(self.procs):
            try:
                p.wait(timeout=2)  # test data only: no need to wait for a graceful drain
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self.procs.clear()


def manifests(*names: str) -> list[dict[str, object]]:
    docs: list[dict[str, object]] = []
    for name in names:
        docs.extend(d for d in yaml.safe_load_all((DAEMONSET / name).read_text()) if d)
    return docs


def env_without_proxy() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}


async def _apply_all(client: AsyncClient, docs: list[dict[str, object]]) -> None:
    for doc in docs:
        obj = codecs.from_dict(doc)
        await client.apply(obj, field_manager="tests", force=True)


async def prepare_cluster(cp: ControlPlane) -> AsyncClient:
    """Apply daemonset/ (CRDs first, until Established), start kube-controller-manager;
    returns an admin client."""
    client = AsyncClient(config=KubeConfig.from_file(cp.admin_kubeconfig), field_manager="tests")
    await _apply_all(
        client,
        manifests(
            "crd-secretproviderclasses.yaml",
            "crd-secretproviderclasspodstatuses.yaml",
            "sync-controller/crd-secretsyncs.yaml",
        ),
    )
    for name in (
        "secretproviderclasses.secrets-store.csi.x-k8s.io",
        "secretproviderclasspodstatuses.secrets-store.csi.x-k8s.io",
        "secretsyncs.secret-sync.x-k8s.io",
    ):
        for _ in range(200):
            crd = await client.get(CRD, name)
            conditions = (crd.get("status") or {}).get("conditions") or []
            if any(c["type"] == "Established" and c["status"] == "True" for c in conditions):
                break
            await asyncio.sleep(0.05)
    await _apply_all(client, manifests("csidriver.yaml", "rbac.yaml", "sync-controller/rbac.yaml"))
    cp.start_controller_manager()
    return client


async def wait_default_service_account(
    admin: AsyncClient, namespace: str, attempts: int = 300
) -> None:
    """Until kube-controller-manager has made the namespace's default ServiceAccount."""
    for _ in range(attempts):
        try:
            await admin.get(ServiceAccount, "default", namespace=namespace)
            return
        except Exception:
            await asyncio.sleep(0.05)
    raise TimeoutError("no default ServiceAccount")


async def service_account_with_rules(
    admin: AsyncClient, name: str, rules: list[dict[str, object]], namespace: str = "kube-system"
) -> None:
    """A ServiceAccount `name`, a ClusterRole `name` with `rules`, and the binding of the two."""
    await admin.create(ServiceAccount(metadata=ObjectMeta(name=name, namespace=namespace)))
    role = cast(ClusterRole, ClusterRole.from_dict({"metadata": {"name": name}, "rules": rules}))
    await admin.create(role)
    binding = {
        "metadata": {"name": name},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
        "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": namespace}],
    }
    await admin.create(cast(ClusterRoleBinding, ClusterRoleBinding.from_dict(binding)))


async def role_with_rules(
    admin: AsyncClient,
    name: str,
    namespace: str,
    rules: list[dict[str, object]],
    account_namespace: str = "kube-system",
) -> None:
    """A Role `name` in `namespace` with `rules`, bound to the ServiceAccount `name` (of
    `account_namespace`): the namespaced half of a least-privilege case."""
    meta = {"name": name, "namespace": namespace}
    await admin.create(cast(Role, Role.from_dict({"metadata": meta, "rules": rules})))
    binding = {
        "metadata": meta,
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
        "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": account_namespace}],
    }
    await admin.create(cast(RoleBinding, RoleBinding.from_dict(binding)))


async def service_account_kubeconfig(
    cp: ControlPlane, admin: AsyncClient, namespace: str, name: str, path: Path
) -> Path:
    """Kubeconfig with a token of any ServiceAccount (least-privilege tests bind their own)."""
    tr = await admin.create(
        ServiceAccountToken(
            metadata=ObjectMeta(),
            spec=TokenRequestSpec(audiences=[ISSUER], expirationSeconds=86400),
        ),
        name=name,
        namespace=namespace,
    )
    assert tr.status is not None and tr.status.token is not None
    return write_kubeconfig(path, cp.server, cp.ca_file, tr.status.token)


async def driver_token_kubeconfig(cp: ControlPlane, admin: AsyncClient) -> Path:
    """Kubeconfig with a token of the driver's own ServiceAccount (daemonset/rbac.yaml)."""
    ns, name = DRIVER_SA
    return await service_account_kubeconfig(cp, admin, ns, name, cp.workdir / "driver.kubeconfig")
