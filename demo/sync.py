"""`make demo-sync`: a Kubernetes Secret from Key Vault with no pod, by the SecretSync controller.

Inside the private network + mount namespace of tests/netns-run: the Key Vault emulator (vault
kv-demo of demo/seed.yaml, plus a workload identity that trusts the cluster's service-account
issuer), etcd + kube-apiserver (RBAC) + kube-controller-manager (the garbage collector) with
daemonset/ and daemonset/sync-controller/ applied, our provider on a unix socket (the
controller's sidecar in the chart), and `python -m sync_controller` with a token of its own
ServiceAccount. A SecretProviderClass and a SecretSync are applied with kubectl; the Secret
appears while no pod exists, follows a change in Key Vault within one poll, and is collected
when the SecretSync is deleted. The Go peers come from `make peers`.
"""

from __future__ import annotations

import asyncio
import base64
import os
import shutil
import tempfile
import time
from pathlib import Path

import httpx2 as httpx
from lightkube import ApiError, Client, KubeConfig
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Secret, ServiceAccount

from demo import TENANT
from demo.story import BEGUN, DemoFailed, kubectl, peer, say, step, wait_for
from testbed.controlplane import (
    ISSUER,
    ControlPlane,
    prepare_cluster,
    service_account_kubeconfig,
)
from testbed.emulator import Emulator
from testbed.provider import ProviderProcess, ours
from testbed.sync_controller import SyncControllerProcess

HERE = Path(__file__).resolve().parent
NAMESPACE = "default"
ACCOUNT = "demo-app"
CLIENT = "0d000001-0000-4000-8000-000000000002"  # the workload identity seeded below
AUDIENCE = "api://AzureADTokenExchange"
POLL = 2.0  # the controller's --rotation-poll-interval, seconds
CONTROLLER_SA = "secrets-store-sync-controller-manager"

MANIFESTS = f"""apiVersion: secrets-store.csi.x-k8s.io/v1
kind: SecretProviderClass
metadata:
  name: azure-kv-sync
  namespace: {NAMESPACE}
spec:
  provider: azure
  parameters:
    keyvaultName: kv-demo
    tenantId: {TENANT}
    clientID: {CLIENT}
    objects: |
      array:
        - |
          objectName: username
          objectType: secret
---
apiVersion: secret-sync.x-k8s.io/v1alpha1
kind: SecretSync
metadata:
  name: demo-sync
  namespace: {NAMESPACE}
spec:
  secretProviderClassName: azure-kv-sync
  serviceAccountName: {ACCOUNT}
  secretObject:
    type: Opaque
    data:
      - sourcePath: username
        targetKey: username
"""


class Demo:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.cp = ControlPlane(
            tmp / "kube",
            peer("etcd"),
            peer("kube-apiserver"),
            peer("kube-controller-manager"),
        )
        self.kubectl_bin = peer("kubectl")
        self.emulator: Emulator | None = None
        self.provider: ProviderProcess | None = None
        self.controller: SyncControllerProcess | None = None
        self.client: Client | None = None

    def kubectl(self, *args: str, stdin: str = "") -> str:
        cache = self.tmp / "kubectl-cache"
        return kubectl(self.kubectl_bin, self.cp.admin_kubeconfig, cache, *args, stdin=stdin).stdout

    def value(self) -> str | None:
        assert self.client is not None
        try:
            secret = self.client.get(Secret, "demo-sync", namespace=NAMESPACE)
        except ApiError as e:
            if e.status.code == 404:
                return None
            raise
        return base64.b64decode((secret.data or {}).get("username", "")).decode()

    # -- the story -------------------------------------------------------------------------

    def start(self) -> None:
        step("starting the Key Vault emulator with vault kv-demo (secret username = admin-v1)")
        self.emulator = Emulator.start(self.tmp / "emulator", seeds=[HERE / "seed.yaml"])
        os.environ["SSL_CERT_FILE"] = str(self.emulator.ca_path)
        step("starting etcd, kube-apiserver (RBAC) and kube-controller-manager")
        self.cp.start()
        kubeconfig = asyncio.run(self._prepare())
        self.client = Client(config=KubeConfig.from_file(self.cp.admin_kubeconfig))
        say(f"API server {self.cp.server}; SecretSync CRD and the controller's RBAC applied")
        step("Key Vault trusts the cluster's service-account issuer (workload identity)")
        say(f"identity {CLIENT}: federated credential for system:serviceaccount:default:{ACCOUNT}")
        sock = self.tmp / "provider" / "azure.sock"
        sock.parent.mkdir()
        step(f"starting the Azure provider on unix://{sock} (the controller's sidecar)")
        self.provider = ours(sock, log=self.tmp / "provider.log")
        self.provider.start()
        step("starting the SecretSync controller with its own ServiceAccount's token")
        flags = (f"--token-request-audience={AUDIENCE}", f"--rotation-poll-interval={POLL:g}s")
        self.controller = SyncControllerProcess(
            kubeconfig, sock.parent, self.tmp / "controller.log", *flags, "--leader-elect"
        ).start()
        say("python -m sync_controller " + " \\\n    ".join(self.controller.argv[3:]))

    async def _prepare(self) -> Path:
        admin = await prepare_cluster(self.cp)
        try:
            await admin.create(
                ServiceAccount(metadata=ObjectMeta(name=ACCOUNT, namespace=NAMESPACE))
            )
            await self._trust()
            return await service_account_kubeconfig(
                self.cp, admin, "kube-system", CONTROLLER_SA, self.tmp / "controller.kubeconfig"
            )
        finally:
            await admin.close()

    async def _trust(self) -> None:
        assert self.emulator is not None
        async with httpx.AsyncClient(verify=str(self.cp.ca_file)) as http:
            jwks = (
                await http.get(
                    f"{self.cp.server}/openid/v1/jwks",
                    headers={"Authorization": f"Bearer {self.cp.admin_token}"},
                )
            ).json()
        subject = f"system:serviceaccount:{NAMESPACE}:{ACCOUNT}"
        self.emulator.seed(
            {
                "issuers": [{"issuer": ISSUER, "jwks": jwks}],
                "identities": [
                    {
                        "name": "demo-sync",
                        "type": "application",
                        "clientId": CLIENT,
                        "federatedCredentials": [
                            {"issuer": ISSUER, "subject": subject, "audience": AUDIENCE}
                        ],
                    }
                ],
                "vaults": [
                    {
                        "name": "kv-demo",
                        "roleAssignments": [
                            {"identity": "demo-sync", "role": "Key Vault Secrets User"}
                        ],
                    }
                ],
            }
        )

    def sync(self) -> None:
        step("a SecretProviderClass and a SecretSync; no pod anywhere")
        say(MANIFESTS)
        self.kubectl("apply", "-f", "-", stdin=MANIFESTS)
        took = wait_for("the Secret", lambda: self.value() is not None, 30)
        step(f"the Secret demo-sync, {took:.1f}s after kubectl apply")
        self.kubectl("get", "pods", "--all-namespaces")
        self.kubectl(
            "get",
            "secret",
            "demo-sync",
            "-o",
            "jsonpath={.metadata.labels}{'\\n'}{.metadata.ownerReferences[0].kind}/"
            "{.metadata.ownerReferences[0].name}{'\\n'}",
        )
        say(f"decoded: username = {self.value()!r}")
        if self.value() != "admin-v1":
            raise DemoFailed(f"demo-sync should hold username=admin-v1, holds {self.value()!r}")
        self.kubectl(
            "get",
            "secretsync",
            "demo-sync",
            "-o",
            "jsonpath={range .status.conditions[*]}{.type}={.status} ({.reason}){'\\n'}{end}",
        )

    def rotate(self) -> None:
        assert self.emulator is not None
        step("changing secret 'username' in Key Vault (a new version)")
        self.emulator.set_secret("kv-demo", "username", "admin-v2")
        took = wait_for("the new value", lambda: self.value() == "admin-v2", 3 * POLL + 5)
        say(f"Secret demo-sync: username = 'admin-v2' {took:.1f}s later (poll: {POLL:g}s)")

    def delete(self) -> None:
        step("deleting the SecretSync: the garbage collector removes its Secret")
        self.kubectl("delete", "secretsync", "demo-sync")
        took = wait_for("the Secret collected", lambda: self.value() is None, 30)
        say(f"Secret demo-sync gone {took:.1f}s after the delete")

    def stop(self) -> list[str]:
        problems = []
        if self.controller is not None and self.controller.stop() not in (0, None):
            problems.append("the controller did not exit 0")
        for name, fn in (
            ("provider", self.provider.stop if self.provider else None),
            ("client", self.client.close if self.client else None),
            ("control plane", self.cp.stop),
            ("emulator", self.emulator.stop if self.emulator else None),
        ):
            try:
                if fn is not None:
                    fn()
            except Exception as e:
                problems.append(f"{name}: {type(e).__name__}: {e}")
        return problems


def main() -> None:
    if os.geteuid() != 0 or os.environ.get("NETNS_RUN_INSIDE") != "1":
        raise SystemExit("run it through `make demo-sync` (root, inside tests/netns-run)")
    tmp = Path(tempfile.mkdtemp(prefix="demo-sync-", dir="/tmp"))
    demo: Demo | None = None
    failure = ""
    try:
        demo = Demo(tmp)
        demo.start()
        demo.sync()
        demo.rotate()
        demo.delete()
    except Exception as e:
        failure = str(e) or type(e).__name__
        print(f"\nFAILED: {failure}", flush=True)
        log = tmp / "controller.log"
        if log.exists():
            print(
                "--- controller.log (last lines)\n" + "\n".join(log.read_text().splitlines()[-15:])
            )
    finally:
        step("cleaning up: controller, provider, control plane, emulator")
        problems = demo.stop() if demo is not None else []
        shutil.rmtree(tmp, ignore_errors=True)
        for p in problems:
            say(p)
    if failure or problems:
        raise SystemExit(f"demo-sync: {failure or 'clean-up failed'}")
    step(f"done in {time.monotonic() - BEGUN:.1f}s")


if __name__ == "__main__":
    main()
