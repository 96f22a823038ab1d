"""A real single-node Kubernetes inside the test namespace (tests/netns-run): etcd,
kube-apiserver, kube-controller-manager, kube-scheduler, kubelet 1.37, containerd 1.6 + runc.

Nothing is written to the host: /var and /run are overlaid with temp dirs inside the
namespace's private mount table (kubelet writes /var/lib/kubelet/device-plugins and
/var/log/containers; containerd's shims live under /run), kubelet's sysctls are satisfied by
files bound over /proc/sys entries, and kubelet's root, containerd's root and state, all logs
and sockets live in one temp dir. `stop()` undoes everything in reverse, even after a failure.
Traps (docs/e2e.md): kubelet refuses a loopback node IP (a TEST-NET address on lo);
containerd needs restrict_oom_score_adj (no CAP_SYS_RESOURCE); only hostNetwork pods run.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import yaml

from testbed import images
from testbed.controlplane import ISSUER, ControlPlane, write_kubeconfig
from testbed.driver import DriverProcess
from testbed.kubelet import DRIVER, volume_dir
from testbed.node_config import NODE_IP, containerd_config, kubelet_config
from testbed.ports import free_port
from testbed.registrar import Registrar
from testbed.rundir import rmdir_tree, run, unmount_under

NODE_NAME = "e2e-node"
# Its own issuer, so that the emulator can trust this cluster next to the driver tests' one.
E2E_ISSUER = "https://kubernetes.e2e-node.test"
NODE_TOKEN = "e2e-node-token-0123456789abcdef"
# The Go peers a node runs (testbed/peers.py names).
NODE_PEERS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet")

# What kubelet sets unless it reads these values (it would write the namespace-shared /proc/sys).
KUBELET_SYSCTLS = {
    "vm/overcommit_memory": "1",
    "vm/panic_on_oom": "0",
    "kernel/panic": "10",
    "kernel/panic_on_oops": "1",
    "kernel/keys/root_maxkeys": "1000000",
    "kernel/keys/root_maxbytes": "25000000",
}


_LIBC = ctypes.CDLL(None, use_errno=True)  # loaded before any fork: the child only calls


def _die_with_parent() -> None:
    """In the child: SIGKILL when pytest dies without a teardown (timeout, kill -9), so no
    kubelet or containerd outlives the run (the rest: reap_stale at the next run)."""
    _LIBC.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


class NodeControlPlane(ControlPlane):
    """The tests' control plane plus what a real kubelet needs: a node identity
    (system:node:<name>), exec/logs reaching the kubelet at its InternalIP, and its own
    service-account issuer."""

    def _spawn(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        if name == "kube-apiserver":
            with open(self.workdir / "tokens.csv", "a") as f:
                f.write(f'{NODE_TOKEN},system:node:{NODE_NAME},node-uid,"system:nodes"\n')
            argv = [
                f"--service-account-issuer={E2E_ISSUER}"
                if a.startswith("--service-account-issuer=")
                else f"--api-audiences={E2E_ISSUER},{ISSUER}"
                if a.startswith("--api-audiences=")
                else a
                for a in argv
            ]
            argv += ["--kubelet-preferred-address-types=InternalIP"]
        return super()._spawn(name, argv)


class Node:
    def __init__(
        self,
        workdir: Path,
        cp: ControlPlane,
        *,
        kubelet_bin: Path,
        scheduler_bin: Path,
    ) -> None:
        self.workdir = workdir
        self.cp = cp
        self.kubelet_bin = kubelet_bin
        self.scheduler_bin = scheduler_bin
        self.root = workdir / "kubelet"
        self.containerd_dir = workdir / "containerd"
        self.containerd_sock = self.containerd_dir / "containerd.sock"
        self.pod_logs = workdir / "pod-logs"
        # cgroupfs is shared by every namespace on the machine: a root of its own per node, so
        # that two runs at once (or another kubelet) never touch each other's pods
        self.cgroup_root = f"/e2e-{workdir.parent.name}"
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self._undo: list[Callable[[], object]] = []

    # -- mounts ---------------------------------------------------------------------------

    def _mount(self, *args: str, target: str) -> None:
        run("mount", *args, target)
        self._undo.append(lambda: run("umount", "-l", target, check=False))

    def _overlay(self, target: str) -> None:
        base = self.workdir / "overlay" / target.strip("/").replace("/", "-")
        upper, work = base / "upper", base / "work"
        upper.mkdir(parents=True)
        work.mkdir(parents=True)
        self._mount(
            "-t",
            "overlay",
            "overlay",
            "-o",
            f"lowerdir={target},upperdir={upper},workdir={work}",
            target=target,
        )

    def start_runtime(self, extra_images: Iterable[Path] = ()) -> None:
        """Isolates the node, makes its cgroup root and starts containerd with the sandbox and
        busybox images (testbed/images.py) and `extra_images` imported."""
        self.isolate()
        self.make_cgroup_root()
        tarballs = [*images.build(self.workdir.parent), *extra_images]
        self.start_containerd()
        self.import_images(tarballs)

    def pod_volume(self, pod_uid: str, volume: str) -> Path:
        """Where the driver mounts a pod's CSI volume on this node."""
        return volume_dir(self.root, pod_uid, volume) / "mount"

    def plugin_driver(
        self, kubeconfig: Path, providers: Path, rotation_interval: str
    ) -> DriverProcess:
        """Our driver as this node's CSI plugin (not started): its socket under kubelet's
        plugins/ dir, as the DaemonSet places it, rotation on."""
        plugins = self.root / "plugins"
        plugins.mkdir()
        return DriverProcess(
            plugins,
            kubeconfig=kubeconfig,
            provider_dirs=(providers, self.workdir.parent / "no-providers"),
            node_id=NODE_NAME,
            name="csi-secrets-store",
            extra=(
                "--enable-secret-rotation=true",
                f"--rotation-poll-interval={rotation_interval}",
            ),
        )

    def register(self, driver: DriverProcess) -> Registrar:
        """Registers the driver with kubelet (start kubelet first: no fork after the
        registrar's gRPC threads exist)."""
        registrar = Registrar(self.root, DRIVER, driver.socket, self.workdir.parent / "stubs")
        registrar.start()
        return registrar

    def check_alive(self, *names: str) -> None:
        """Raises, with the tail of its log, if one of these processes has exited."""
        for name in names or ("kubelet", "containerd"):
            self._alive(name)

    def isolate(self) -> None:
        """Everything host-visible the node would write, redirected into the temp dir."""
        if os.environ.get("NETNS_RUN_INSIDE") != "1":
            raise RuntimeError("the node runs only inside tests/netns-run (private namespaces)")
        self._overlay("/var")
        self._overlay("/run")
        sysctl_dir = self.workdir / "sysctl"
        sysctl_dir.mkdir()
        for key, want in KUBELET_SYSCTLS.items():
            entry = Path("/proc/sys") / key
            if entry.read_text().strip() == want:
                continue
            f = sysctl_dir / key.replace("/", ".")
            f.write_text(want + "\n")
            self._mount("--bind", str(f), target=str(entry))
        run("ip", "addr", "add", f"{NODE_IP}/32", "dev", "lo")
        self._undo.append(
            lambda: run("ip", "addr", "del", f"{NODE_IP}/32", "dev", "lo", check=False)
        )
        # kubelet's root: rshared, so the driver's tmpfs mounts reach the containers
        self.root.mkdir()
        self._mount("--bind", str(self.root), target=str(self.root))
        run("mount", "--make-rshared", str(self.root))
        self._undo.append(self._unmount_under_root)

    def _unmount_under_root(self) -> None:
        unmount_under(self.root)

    # -- processes -------------------------------------------------------------------------

    def _spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> None:
        log = open(self.workdir / f"{name}.log", "wb")  # noqa: SIM115 (closed with the process)
        self.procs[name] = subprocess.Popen(
            argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.workdir,
            env=env,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )

    def _alive(self, name: str) -> None:
        p = self.procs[name]
        if p.poll() is not None:
            tail = (self.workdir / f"{name}.log").read_text(errors="replace")[-3000:]
            raise RuntimeError(f"{name} exited ({p.returncode}):\n{tail}")

    def log(self, name: str) -> str:
        return (self.workdir / f"{name}.log").read_text(errors="replace")

    def start_scheduler(self) -> None:
        self._spawn(
            "kube-scheduler",
            [
                str(self.scheduler_bin),
                f"--kubeconfig={self.cp.admin_kubeconfig}",
                f"--authentication-kubeconfig={self.cp.admin_kubeconfig}",
                f"--authorization-kubeconfig={self.cp.admin_kubeconfig}",
                "--leader-elect=false",
                "--bind-address=127.0.0.1",
                f"--secure-port={free_port()}",
            ],
        )

    def start_containerd(self) -> None:
        d = self.containerd_dir
        d.mkdir()
        config = containerd_config(d, self.containerd_sock)
        (d / "config.toml").write_text(config)
        self._spawn("containerd", ["containerd", "--config", str(d / "config.toml")])
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            self._alive("containerd")
            if self.containerd_sock.exists() and self.ctr("version", check=False).returncode == 0:
                return
            time.sleep(0.05)
        raise TimeoutError(f"containerd not ready:\n{self.log('containerd')[-3000:]}")

    def ctr(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return run(
            "ctr", "--address", str(self.containerd_sock), "-n", "k8s.io", *args, check=check
        )

    def import_images(self, tarballs: list[Path]) -> None:
        for t in tarballs:
            self.ctr("images", "import", "--no-unpack=false", str(t))

    def start_kubelet(self, *flags: str) -> None:
        """kubelet, with `flags` added (e.g. `--register-with-taints=…`)."""
        kubeconfig = write_kubeconfig(
            self.workdir / "kubelet.kubeconfig", self.cp.server, self.cp.ca_file, NODE_TOKEN
        )
        self.pod_logs.mkdir()
        config = kubelet_config(self.cgroup_root, self.containerd_sock, self.pod_logs)
        (self.workdir / "kubelet.yaml").write_text(yaml.safe_dump(config))
        self._spawn(
            "kubelet",
            [
                str(self.kubelet_bin),
                f"--config={self.workdir / 'kubelet.yaml'}",
                f"--kubeconfig={kubeconfig}",
                f"--root-dir={self.root}",
                f"--cert-dir={self.workdir / 'kubelet-pki'}",
                f"--hostname-override={NODE_NAME}",
                f"--node-ip={NODE_IP}",
                "--v=2",
                *flags,
            ],
        )

    # -- teardown --------------------------------------------------------------------------

    def _stop_proc(self, name: str, timeout: float = 10) -> None:
        p = self.procs.pop(name, None)
        if p is None or p.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGTERM)
        try:
            p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
            p.wait()

    def _kill_containers(self) -> None:
        """containerd's shims outlive containerd: kill every task, then the shims."""
        if not self.containerd_sock.exists():
            return
        tasks = self.ctr("tasks", "list", "-q", check=False).stdout.split()
        for t in tasks:
            self.ctr("tasks", "kill", "-s", "SIGKILL", t, check=False)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and any(
            "RUNNING" in line for line in self.ctr("tasks", "list", check=False).stdout.splitlines()
        ):
            time.sleep(0.1)

    def _kill_shims(self) -> None:
        marker = str(self.containerd_dir).encode()
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                cmdline = (proc / "cmdline").read_bytes()
            except OSError:
                continue
            if b"containerd-shim" in cmdline and marker in cmdline:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(proc.name), signal.SIGKILL)

    def _cgroup_dirs(self) -> list[Path]:
        base = Path("/sys/fs/cgroup")
        return [
            c / self.cgroup_root.lstrip("/")
            for c in sorted(base.iterdir())
            if c.is_dir() and (c / "cgroup.procs").exists()
        ]

    def make_cgroup_root(self) -> None:
        for d in self._cgroup_dirs():
            d.mkdir(exist_ok=True)
            for f in ("cpuset.cpus", "cpuset.mems"):  # an empty cpuset admits no process
                if (d / f).exists() and not (d / f).read_text().strip():
                    (d / f).write_text((d.parent / f).read_text())
        self._undo.append(self._remove_cgroups)

    def _remove_cgroups(self) -> None:
        """kubelet's cgroups are kernel state outside the namespace: remove them, deepest first."""
        for top in self._cgroup_dirs():
            rmdir_tree(top)

    def stop(self) -> None:
        errors: list[BaseException] = []
        steps: list[Callable[[], object]] = [
            lambda: self._stop_proc("kubelet"),
            self._kill_containers,
            lambda: self._stop_proc("containerd"),
            self._kill_shims,
            lambda: self._stop_proc("kube-scheduler"),
            *reversed(self._undo),
        ]
        for step in steps:
            try:
                step()
            except Exception as e:
                errors.append(e)
        for name in list(self.procs):
            self._stop_proc(name)
        self._undo.clear()
        shutil.rmtree(self.workdir / "overlay", ignore_errors=True)
        if errors:
            raise errors[0]


def new_node(tmp: Path, bins: Mapping[str, Path]) -> Node:
    """A node (not started) in tmp/node, its control plane in tmp/cp; `bins` holds NODE_PEERS."""
    cp = NodeControlPlane(
        tmp / "cp", bins["etcd"], bins["kube-apiserver"], bins["kube-controller-manager"]
    )
    (tmp / "node").mkdir()
    return Node(tmp / "node", cp, kubelet_bin=bins["kubelet"], scheduler_bin=bins["kube-scheduler"])
