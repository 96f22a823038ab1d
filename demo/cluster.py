# Over 400 lines: one story told in order (start, publish, rotate, delete) with its teardown.
"""`make demo`'s story through the CSI socket, on a real single-node Kubernetes, synced Secrets too.

Everything runs inside the private network + mount namespace of tests/netns-run: the Key Vault
emulator (seeded from demo/seed.yaml), the provider on its socket, etcd + kube-apiserver (RBAC) +
kube-controller-manager + kube-scheduler with daemonset/'s CRDs, CSIDriver and RBAC applied, a
real kubelet 1.37 with containerd + runc, and our driver serving its CSI socket with a token of
its own ServiceAccount (never admin), registered with kubelet the way node-driver-registrar
registers it. kubelet, not this script, calls NodePublishVolume when the Pod starts.

The node is the test suite's (testbed/node.py, testbed/controlplane.py): this is a developer
target run from a checkout, so it imports the testbed rather than keeping a second copy. The Go
peers come from `make peers` (cached under ~/.cache/secrets-store-csi-peers).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import shutil
import signal
import subprocess
import textwrap
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import Any

from lightkube import ApiError, Client, KubeConfig
from lightkube.resources.core_v1 import Pod, Secret, ServiceAccount
from lightkube.resources.storage_v1 import CSINode

from csi_driver import mounter
from csi_driver.kube import SecretProviderClassPodStatus
from demo import CLIENT_ID, CLIENT_SECRET, SPC_PARAMETERS
from demo.story import BEGUN, DemoFailed, kubectl, peer, say, step, wait_for
from testbed import images
from testbed.controlplane import driver_token_kubeconfig, prepare_cluster
from testbed.driver import DriverProcess
from testbed.emulator import Emulator
from testbed.node import NODE_NAME, NODE_PEERS, new_node
from testbed.ports import free_port
from testbed.provider import ProviderProcess, ours
from testbed.registrar import Registrar
from testbed.rundir import reap_stale, run_dir, unmount_under

HERE = Path(__file__).resolve().parent
DRIVER_NAME = "secrets-store.csi.k8s.io"
NAMESPACE = "default"
POD = "busybox-secrets-store-inline"
INTERVAL = 2.0  # the driver's --rotation-poll-interval, seconds
WAIT_ROTATION = 5 * INTERVAL
MOUNT = "/mnt/secrets-store"

# The SecretProviderClass, written as the AKS docs write it: the first demo's objects, plus
# secretObjects syncing `foo1` into an Opaque Secret (read by an env var, the docs' example)
# and the certificate's PEM bundle into a kubernetes.io/tls Secret (an ingress would use it).
SPC = f"""apiVersion: secrets-store.csi.x-k8s.io/v1
kind: SecretProviderClass
metadata:
  name: azure-sync
  namespace: {NAMESPACE}
spec:
  provider: azure
  secretObjects:
  - data:
    - key: username
      objectName: foo1
    secretName: foosecret
    type: Opaque
  - data:
    - key: tls.key
      objectName: web-cert.pem
    - key: tls.crt
      objectName: web-cert.pem
    secretName: web-tls
    type: kubernetes.io/tls
{SPC_PARAMETERS}
"""

# The container prints its env var, then every value of foo1 it sees (its logs show the
# rotation from inside the pod). It traps SIGTERM so a delete does not wait out the grace period.
WATCH = f"""echo "SECRET_USERNAME=$SECRET_USERNAME (env var from the synced Secret foosecret)"
trap 'exit 0' TERM
last=""
while true; do
  v=$(cat {MOUNT}/foo1)
  if [ "$v" != "$last" ]; then echo "$(date -u +%H:%M:%S) {MOUNT}/foo1 = $v"; last=$v; fi
  sleep 1 & wait $!
done"""

POD_YAML = f"""apiVersion: v1
kind: Pod
metadata:
  name: {POD}
  namespace: {NAMESPACE}
spec:
  hostNetwork: true   # the node's only network is loopback (no CNI here)
  tolerations:
  - operator: Exists  # the node is NotReady for want of a CNI network
  terminationGracePeriodSeconds: 5
  containers:
  - name: busybox
    image: {images.BUSYBOX_IMAGE}
    imagePullPolicy: Never
    command:
    - /bin/sh
    - -c
    - |
{textwrap.indent(WATCH, " " * 6)}
    env:
    - name: SECRET_USERNAME
      valueFrom:
        secretKeyRef:
          name: foosecret
          key: username
    volumeMounts:
    - name: secrets-store01-inline
      mountPath: {MOUNT}
      readOnly: true
  volumes:
  - name: secrets-store01-inline
    csi:
      driver: {DRIVER_NAME}
      readOnly: true
      volumeAttributes:
        secretProviderClass: azure-sync
      nodePublishSecretRef:
        name: secrets-store-creds
"""


class Interrupted(BaseException):
    """SIGTERM: unwinds like Ctrl-C, through every clean-up step."""


def secret_data(client: Client, name: str) -> dict[str, str] | None:
    try:
        s = client.get(Secret, name, namespace=NAMESPACE)
    except ApiError as e:
        if e.status.code == 404:
            return None
        raise
    return {k: base64.b64decode(v).decode() for k, v in (s.data or {}).items()}


def metrics(port: int, prefixes: tuple[str, ...]) -> list[str]:
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return [line for line in body.splitlines() if line.startswith(prefixes)]


class LogTail:
    """New lines of the driver's log that tell the story (publish, sync, rotation)."""

    WORDS = ("rotation:", "Secret ", "publish", "SecretProviderClassPodStatus", "unpublish")

    def __init__(self, path: Path) -> None:
        self.path, self.offset = path, 0

    def show(self) -> None:
        data = self.path.read_text(errors="replace") if self.path.exists() else ""
        new, self.offset = data[self.offset :], len(data)
        for line in new.splitlines():
            if any(w in line for w in self.WORDS) and "GET " not in line:
                say("driver| " + line.split("] ", 1)[-1])


class Demo:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.emulator: Emulator | None = None
        self.provider: ProviderProcess | None = None
        self.node = new_node(tmp, {n: peer(n) for n in NODE_PEERS})
        self.cp = self.node.cp
        self.kubectl_bin = peer("kubectl")
        self.driver: DriverProcess | None = None
        self.registrar: Registrar | None = None
        self.client: Client | None = None
        self.tail: LogTail | None = None
        self.pod_uid = ""

    # -- helpers ---------------------------------------------------------------------------

    def kubectl(
        self, *args: str, show: bool = True, kubeconfig: Path | None = None
    ) -> subprocess.CompletedProcess[str]:
        config = kubeconfig or self.cp.admin_kubeconfig
        return kubectl(self.kubectl_bin, config, self.tmp / "kubectl-cache", *args, show=show)

    def exec(self, *cmd: str, show: bool = True) -> str:
        return self.kubectl("exec", POD, "--", *cmd, show=show).stdout

    @property
    def target(self) -> Path:
        return self.node.pod_volume(self.pod_uid, "secrets-store01-inline")

    # -- the story -------------------------------------------------------------------------

    def start(self) -> None:
        tmp = self.tmp
        step("starting the Key Vault emulator (Key Vault + Entra ID) with vault kv-demo")
        self.emulator = Emulator.start(tmp / "emulator", seeds=[HERE / "seed.yaml"])
        os.environ["SSL_CERT_FILE"] = str(self.emulator.ca_path)

        providers = tmp / "providers"
        providers.mkdir()
        sock = providers / "azure.sock"
        self.provider_metrics = free_port()
        step(f"starting the Azure provider on unix://{sock}")
        self.provider = ours(sock, prometheus_port=self.provider_metrics, log=tmp / "provider.log")
        self.provider.start()

        step(
            "isolating the node (overlays on /var and /run, node IP on lo) and starting containerd"
        )
        self.node.start_runtime()
        say(f"images imported: {images.PAUSE} (sandbox), {images.BUSYBOX_IMAGE}")

        step("starting etcd and kube-apiserver (--authorization-mode=Node,RBAC)")
        self.cp.start()
        say(f"API server {self.cp.server}")

        step("applying daemonset/ (CRDs, CSIDriver, RBAC); starting the controller manager")
        driver_kubeconfig = asyncio.run(self._prepare())
        self.node.start_scheduler()
        self.client = Client(config=KubeConfig.from_file(self.cp.admin_kubeconfig))
        self.kubectl("get", "csidriver", DRIVER_NAME)

        step("starting the driver on its CSI socket, with its own ServiceAccount's token")
        self.driver = self.node.plugin_driver(driver_kubeconfig, providers, f"{INTERVAL:g}s")
        # as run, less the harness defaults that the two flags above override
        overridden = ("--enable-secret-rotation=false", "--rotation-poll-interval=2m")
        shown = " ".join(a for a in self.driver.argv()[3:] if a not in overridden)
        say("python -m csi_driver " + shown.replace(" --", " \\\n    --"))
        self.kubectl("auth", "whoami", kubeconfig=driver_kubeconfig)
        self.tail = LogTail(self.driver.log)
        self.driver.start()

        step("starting kubelet 1.37 and registering the driver with it (plugins_registry)")
        self.node.start_kubelet()  # before the registrar's gRPC threads: no fork after them
        self.registrar = self.node.register(self.driver)
        took = wait_for("the driver registered with kubelet", self._node_ready, 90, 0.2)
        say(f"{DRIVER_NAME} registered on node {NODE_NAME} in {took:.1f}s")
        self.kubectl("get", "csinode", NODE_NAME)
        say(
            "(the node stays NotReady: no CNI network on a loopback-only node; the pod below\n"
            " uses hostNetwork and tolerates that taint)"
        )
        wait_for(
            "the default ServiceAccount",
            lambda: self._exists(ServiceAccount, "default"),
            30,
        )

    async def _prepare(self) -> Path:
        admin = await prepare_cluster(self.cp)
        try:
            return Path(await driver_token_kubeconfig(self.cp, admin))
        finally:
            await admin.close()

    def _node_ready(self) -> bool:
        self.node.check_alive()
        assert self.registrar is not None and self.client is not None
        if self.registrar.errors:
            raise DemoFailed(f"plugin registration failed: {self.registrar.errors}")
        try:
            csinode = self.client.get(CSINode, NODE_NAME)
        except Exception:  # not there yet, or there without its drivers list
            return False
        drivers = [d.name for d in (csinode.spec.drivers or [])]
        return DRIVER_NAME in drivers and self.registrar.registered.is_set()

    def _exists(self, kind: Any, name: str) -> bool:
        assert self.client is not None
        try:
            self.client.get(kind, name, namespace=NAMESPACE)
        except ApiError as e:
            if e.status.code == 404:
                return False
            raise
        return True

    def mount_pod(self) -> None:
        assert self.client is not None and self.tail is not None
        files = self.tmp / "manifests"
        files.mkdir()
        step("the service principal's credentials, as the AKS docs create them")
        say(
            "$ kubectl create secret generic secrets-store-creds "
            f"--from-literal clientid={CLIENT_ID} --from-literal clientsecret=***"
        )
        self.kubectl(
            "create",
            "secret",
            "generic",
            "secrets-store-creds",
            f"--from-literal=clientid={CLIENT_ID}",
            f"--from-literal=clientsecret={CLIENT_SECRET}",
            show=False,
        )
        self.kubectl("label", "secret", "secrets-store-creds", "secrets-store.csi.k8s.io/used=true")

        step(
            "the SecretProviderClass, with secretObjects (an Opaque and a kubernetes.io/tls Secret)"
        )
        (files / "spc.yaml").write_text(SPC)
        say(SPC)
        self.kubectl("apply", "-f", str(files / "spc.yaml"))

        step("the Pod: the CSI inline volume, and SECRET_USERNAME from the synced Secret")
        (files / "pod.yaml").write_text(POD_YAML)
        say(POD_YAML)
        created = time.monotonic()
        self.kubectl("apply", "-f", str(files / "pod.yaml"))

        def running() -> bool:
            assert self.client is not None
            pod = self.client.get(Pod, POD, namespace=NAMESPACE)
            self.node.check_alive("kubelet")
            return pod.status is not None and pod.status.phase == "Running"

        try:
            took = wait_for("the Pod Running", running, 60, 0.2)
        except DemoFailed:
            self.kubectl("describe", "pod", POD)
            raise
        pod = self.client.get(Pod, POD, namespace=NAMESPACE)
        assert pod.metadata is not None and pod.metadata.uid is not None
        self.pod_uid = pod.metadata.uid
        say(f"Running {took:.1f}s after `kubectl apply` (kubelet called NodePublishVolume)")
        self.kubectl("get", "pod", POD, "-o", "wide")
        self.tail.show()
        del created

    def show_mount(self) -> None:
        step(f"inside the container: the files at {MOUNT}, their modes, and foo1")
        self.exec("ls", "-lL", MOUNT)
        value = self.exec("cat", f"{MOUNT}/foo1")
        say(f"foo1 = {value!r}")
        if value != "admin-v1":
            raise DemoFailed(f"foo1 should be 'admin-v1', is {value!r}")
        fstype = mounter.mount_points().get(str(self.target), "(not a mount)")
        say(f"on the node: {self.target} ({fstype})")
        step("the pod's log")
        self.kubectl("logs", POD)

    def show_sync(self) -> None:
        assert self.client is not None
        step("the synced Opaque Secret (the demo's fake value, decoded below)")
        self.kubectl("get", "secret", "foosecret", "-o", "yaml")
        data = secret_data(self.client, "foosecret")
        say(f"decoded: username = {(data or {}).get('username')!r}")
        if data != {"username": "admin-v1"}:
            raise DemoFailed(f"foosecret should hold username=admin-v1, holds {data}")
        step("the synced kubernetes.io/tls Secret (key names and sizes only)")
        self.kubectl("describe", "secret", "web-tls")
        tls = secret_data(self.client, "web-tls") or {}
        firsts = {k: v.splitlines()[0] if v else "" for k, v in sorted(tls.items())}
        for k, first in firsts.items():
            say(f"{k}: {first}")
        if set(tls) != {"tls.crt", "tls.key"} or "CERTIFICATE" in tls.get("tls.key", "x"):
            raise DemoFailed(f"web-tls should hold tls.crt and tls.key only, holds {sorted(tls)}")
        step("the SecretProviderClassPodStatus the driver wrote (owned by the Pod)")
        self.kubectl("get", "secretproviderclasspodstatuses", "-o", "yaml")

    def rotate(self) -> None:
        assert self.emulator is not None and self.client is not None and self.tail is not None
        driver = self.driver
        assert driver is not None
        step("changing secret 'username' in the emulator (a new version)")
        self.emulator.set_secret("kv-demo", "username", "admin-v2")
        changed = time.monotonic()
        step(f"waiting for the rotation (--rotation-poll-interval={INTERVAL:g}s)")
        file_took = wait_for(
            "foo1 in the container",
            lambda: self.exec("cat", f"{MOUNT}/foo1", show=False) == "admin-v2",
            WAIT_ROTATION,
            0.2,
        )
        say(f"file: foo1 = 'admin-v2' in the container {file_took:.1f}s after the change")

        def synced() -> bool:
            assert self.client is not None
            return secret_data(self.client, "foosecret") == {"username": "admin-v2"}

        wait_for("foosecret's new value", synced, WAIT_ROTATION, 0.1)
        secret_took = time.monotonic() - changed
        say(f"Secret: foosecret username = 'admin-v2' {secret_took:.1f}s after the change")
        # the container polls foo1 every second; the driver logs the rotation after its writes
        wait_for(
            "the pod's log showing the new value",
            lambda: f"{MOUNT}/foo1 = admin-v2" in self.kubectl("logs", POD, show=False).stdout,
            5,
            0.3,
        )
        wait_for(
            "the driver's rotation log line",
            lambda: "files rewritten" in driver.log.read_text(errors="replace"),
            5,
        )
        self.tail.show()
        self.kubectl("logs", POD)
        step("the env var keeps its value until the pod restarts (rotation semantics)")
        env = self.exec("sh", "-c", "echo $SECRET_USERNAME").strip()
        say(f"SECRET_USERNAME = {env!r}")
        if env != "admin-v1":
            raise DemoFailed(f"the env var should keep 'admin-v1', is {env!r}")

    def show_metrics(self) -> None:
        assert self.driver is not None
        step(f"driver metrics (http://127.0.0.1:{self.driver.metrics_port}/metrics)")
        lines = metrics(
            self.driver.metrics_port,
            ("node_publish_total", "rotation_reconcile_total", "sync_k8s_secret_total"),
        )
        for line in lines:
            say(line)

        def total(prefix: str) -> float:
            return sum(float(line.rsplit(" ", 1)[1]) for line in lines if line.startswith(prefix))

        # one publish; a reconcile that rotated; foosecret and web-tls created, foosecret updated
        for prefix, least in (
            ("node_publish_total{", 1),
            ('rotation_reconcile_total{os_type="linux",provider="azure",rotated="true"}', 1),
            ("sync_k8s_secret_total{", 3),
        ):
            if total(prefix) < least:
                raise DemoFailed(f"the driver's metrics: {prefix}... below {least}")
        step(f"provider metrics (http://127.0.0.1:{self.provider_metrics}/metrics)")
        for line in metrics(self.provider_metrics, ("keyvault_request_count",)):
            say(line)

    def delete_pod(self) -> None:
        assert self.client is not None and self.tail is not None
        step("deleting the Pod: kubelet unpublishes; the SPCPS and synced Secrets are collected")
        started = time.monotonic()
        self.kubectl("delete", "pod", POD, "--wait=false")
        wait_for("the Pod gone", lambda: not self._exists(Pod, POD), 30, 0.1)
        say(f"pod gone after {time.monotonic() - started:.1f}s")

        def unmounted() -> bool:
            return str(self.target) not in mounter.mount_points()

        wait_for("the volume unmounted", unmounted, 30)
        say(f"{self.target} mounted: False (exists: {self.target.exists()})")

        def no_spcps() -> bool:
            assert self.client is not None
            return not list(self.client.list(SecretProviderClassPodStatus, namespace=NAMESPACE))

        wait_for("the SecretProviderClassPodStatus collected", no_spcps, 30)
        for name in ("foosecret", "web-tls"):
            wait_for(f"Secret {name} collected", lambda n=name: not self._exists(Secret, n), 30)  # type: ignore[misc]
        say(f"SPCPS and synced Secrets gone {time.monotonic() - started:.1f}s after the delete")
        self.kubectl("get", "secretproviderclasspodstatuses,secrets")
        self.tail.show()

    # -- teardown --------------------------------------------------------------------------

    def stop(self, interrupted: bool = False) -> list[str]:
        """Everything down, in reverse, even after a failure; returns what went wrong. After a
        Ctrl-C the driver has had the terminal's SIGINT too: its exit status is not checked."""
        problems: list[str] = []
        for what, fn in self._teardown(interrupted):
            try:
                fn()
            except Exception as e:
                problems.append(f"{what}: {type(e).__name__}: {e}")
        unmount_under(self.tmp)
        left = [m for m in mounter.mount_points() if m.startswith(str(self.tmp) + "/")]
        if left:
            problems.append(f"still mounted: {left}")
        running = processes_under(self.tmp)
        if running:
            problems.append(f"still running: {running}")
        return problems

    def _teardown(self, interrupted: bool) -> list[tuple[str, Callable[[], object]]]:
        """The teardown steps that apply, in order."""
        steps: list[tuple[str, Callable[[], object]]] = []
        if self.client is not None and self.pod_uid and self._safe_exists(Pod, POD):
            steps.append(("deleting the pod", self._delete_pod_now))
        steps.append(("stopping the node", self.node.stop))
        if self.registrar is not None:
            steps.append(("stopping the registrar", self.registrar.stop))
        driver = self.driver
        if driver is not None and driver.proc is not None:

            def stop_driver() -> None:
                rc = driver.stop()
                if rc != 0 and not interrupted:
                    raise DemoFailed(f"the driver exited {rc}")

            steps.append(("stopping the driver", stop_driver))
        if self.provider is not None:
            steps.append(("stopping the provider", self.provider.stop))
        if self.client is not None:
            steps.append(("closing the client", self.client.close))
        steps.append(("stopping the control plane", self.cp.stop))
        if self.emulator is not None:
            steps.append(("stopping the emulator", self.emulator.stop))
        return steps

    def _safe_exists(self, kind: Any, name: str) -> bool:
        try:
            return self._exists(kind, name)
        except Exception:
            return False

    def _delete_pod_now(self) -> None:
        assert self.client is not None
        self.client.delete(Pod, POD, namespace=NAMESPACE, grace_period=0)
        wait_for("the pod gone", lambda: not self._exists(Pod, POD), 20, 0.2)


def processes_under(tmp: Path) -> list[str]:
    marker = str(tmp).encode()
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and int(proc.name) != os.getpid():
            with contextlib.suppress(OSError):
                cmdline = (proc / "cmdline").read_bytes()
                if marker in cmdline:
                    found.append(cmdline.split(b"\0", 1)[0].decode(errors="replace"))
    return found


def show_logs(tmp: Path) -> None:
    """On a failure, the last lines of each component's log (they go with the temp dir)."""
    for log in ("node/kubelet/plugins/csi-secrets-store.log", "provider.log", "node/kubelet.log"):
        path = tmp / log
        if path.exists():
            lines = path.read_text(errors="replace").splitlines()[-15:]
            print(f"--- {log} (last lines)")
            for line in lines:
                print("    " + line[:200])


@contextlib.contextmanager
def sigterm_unwinds() -> Iterator[None]:
    def handler(signum: int, frame: FrameType | None) -> None:
        raise Interrupted

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main() -> None:
    if os.geteuid() != 0 or os.environ.get("NETNS_RUN_INSIDE") != "1":
        raise SystemExit("run it through `make demo-cluster` (root, inside tests/netns-run)")
    for stale in reap_stale():
        print(f"cleaned up after an earlier run killed without teardown: {stale}")
    tmp = run_dir("e2e-demo-")
    failure: str | None = None
    demo: Demo | None = None
    with sigterm_unwinds():
        try:
            demo = Demo(tmp)
            demo.start()
            demo.mount_pod()
            demo.show_mount()
            demo.show_sync()
            demo.rotate()
            demo.show_metrics()
            demo.delete_pod()
        except DemoFailed as e:
            failure = str(e)
        except (KeyboardInterrupt, Interrupted):
            failure = "interrupted"
        except Exception as e:
            failure = f"{type(e).__name__}: {e}"
        finally:
            if failure and failure != "interrupted":
                print(f"\nFAILED: {failure}", flush=True)
                show_logs(tmp)
            step("cleaning up: kubelet, containers, containerd, driver, provider, control plane")
            problems = demo.stop(failure == "interrupted") if demo is not None else []
            shutil.rmtree(tmp, ignore_errors=True)
            for p in problems:
                say(p)
            if not problems:
                say("nothing left mounted or running")
    if failure or problems:
        raise SystemExit(f"demo-cluster: {failure or 'clean-up failed'}")
    step(f"done in {time.monotonic() - BEGUN:.1f}s")


if __name__ == "__main__":
    main()
