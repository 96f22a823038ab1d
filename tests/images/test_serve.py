"""The images at work: each daemon started from its image's ENTRYPOINT with `buildah run`
(chroot isolation, the test namespace's network and hosts file), its socket in a bind-mounted
host directory, against the Key Vault emulator."""

from __future__ import annotations

import os
import secrets
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
import pytest
import yaml

from secrets_store_api import csi_pb2, csi_pb2_grpc
from testbed.emulator import SP_READER_ID, SP_READER_SECRET, TENANT_ID, Emulator
from testbed.mount_attributes import attributes, objects_yaml
from testbed.ports import free_port
from testbed.provider import ProviderProcess

from .conftest import ENV, VERSION, Container, Image

VAULT = "kv-test"  # in tests/netns-hosts; the reader SP may read its secrets
UID = 65532
TRUST = "/etc/ssl/emulator-trust.pem"


def _unique_secret(emulator: Emulator) -> tuple[str, str]:
    name, value = f"image-{uuid.uuid4().hex[:10]}", secrets.token_urlsafe(24)
    emulator.seed({"vaults": [{"name": VAULT, "secrets": [{"name": name, "value": value}]}]})
    return name, value


def _trust_volume() -> str:
    """The session's bundle (emulator CA + system CAs) as the provider's trust store."""
    return f"{os.environ['SSL_CERT_FILE']}:{TRUST}:ro"


@contextmanager
def _provider(
    image: Image, ctr: Container, sock_dir: Path, log: Path
) -> Iterator[tuple[ProviderProcess, int, int]]:
    """The provider from its image, with its healthz and prometheus ports."""
    os.chown(sock_dir, UID, UID)  # the provider runs as the image's non-root user
    healthz, prometheus = free_port(), free_port()
    argv = ctr.argv(
        [
            *image.config["Entrypoint"],
            "--endpoint=unix:///provider/azure.sock",
            f"--healthz-port={healthz}",
            f"--prometheus-port={prometheus}",
        ],
        volumes=(f"{sock_dir}:/provider", _trust_volume()),
        env={"SSL_CERT_FILE": TRUST, "REQUESTS_CA_BUNDLE": TRUST},
    )
    proc = ProviderProcess(argv, str(sock_dir / "azure.sock"), env=ENV, log=log)
    try:
        proc.start(wait=30)
    except (RuntimeError, TimeoutError) as e:
        proc.stop()
        raise AssertionError(f"{e}\n{log.read_text()}") from e
    try:
        yield proc, healthz, prometheus
    finally:
        proc.stop()


def test_provider_image_serves_a_mount(
    provider_image: Image, emulator: Emulator, tmp_path: Path
) -> None:
    name, value = _unique_secret(emulator)
    sock_dir = tmp_path / "provider"
    sock_dir.mkdir()
    log = tmp_path / "provider.log"
    with (
        provider_image.container() as ctr,
        _provider(provider_image, ctr, sock_dir, log) as (p, healthz, prometheus),
    ):
        assert (sock_dir / "azure.sock").stat().st_uid == UID  # made by the non-root process
        response = p.mount(
            attributes(
                vault=VAULT,
                tenant=TENANT_ID,
                objects=objects_yaml({"objectName": name, "objectType": "secret"}),
            ),
            {"clientid": SP_READER_ID, "clientsecret": SP_READER_SECRET},
            permission="420",
        )
        assert [(f.path, f.mode, f.contents) for f in response.files] == [
            (name, 0o644, value.encode())
        ]
        with urllib.request.urlopen(f"http://127.0.0.1:{healthz}/healthz", timeout=5) as r:
            assert r.read() == b"ok"
        with urllib.request.urlopen(f"http://127.0.0.1:{prometheus}/metrics", timeout=5) as r:
            assert "# TYPE keyvault_request histogram" in r.read().decode()
    assert value not in log.read_text()  # secret material never logged


def _wait_socket(path: Path, proc: subprocess.Popen[bytes], log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"no socket at {path} (exit {proc.poll()}):\n{log.read_text()}")
        time.sleep(0.05)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_driver_image_answers_csi_identity(driver_image: Image, tmp_path: Path) -> None:
    csi_dir, providers = tmp_path / "csi", tmp_path / "providers"
    csi_dir.mkdir()
    providers.mkdir()
    log = tmp_path / "driver.log"
    metrics = free_port()
    with driver_image.container() as ctr, log.open("wb") as out:
        argv = ctr.argv(
            [
                *driver_image.config["Entrypoint"],
                "--endpoint=unix:///csi/csi.sock",
                "--nodeid=image-node",
                "--provider-volume=/providers",
                f"--metrics-addr=127.0.0.1:{metrics}",
            ],
            volumes=(f"{csi_dir}:/csi", f"{providers}:/providers"),
        )
        proc = subprocess.Popen(argv, env=ENV, stdout=out, stderr=subprocess.STDOUT)
        try:
            _wait_socket(csi_dir / "csi.sock", proc, log, 30)
            with grpc.insecure_channel(f"unix://{csi_dir / 'csi.sock'}") as channel:
                identity = csi_pb2_grpc.IdentityStub(channel)
                info = identity.GetPluginInfo(csi_pb2.GetPluginInfoRequest(), timeout=10)
                assert (info.name, info.vendor_version) == ("secrets-store.csi.k8s.io", VERSION)
                assert identity.Probe(csi_pb2.ProbeRequest(), timeout=10).ready.value is True
                node = csi_pb2_grpc.NodeStub(channel)
                assert node.NodeGetInfo(csi_pb2.NodeGetInfoRequest(), timeout=10).node_id == (
                    "image-node"
                )
            with urllib.request.urlopen(f"http://127.0.0.1:{metrics}/metrics", timeout=5) as r:
                assert "# TYPE node_publish_total counter" in r.read().decode()
        finally:
            _stop(proc)


def _wait_for(
    check: Callable[[], bool], timeout: float, what: str, proc: subprocess.Popen[bytes], log: Path
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if check():
            return
        time.sleep(0.1)
    raise AssertionError(f"no {what} within {timeout} s (exit {proc.poll()}):\n{log.read_text()}")


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def _daemon_pid(parent: int, marker: str) -> int | None:
    """The pid of the process under `parent` (buildah run) whose command line has marker."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    todo = list(children.get(parent, []))
    while todo:
        pid = todo.pop()
        try:
            if marker in (Path(f"/proc/{pid}/cmdline")).read_bytes().decode(errors="replace"):
                return pid
        except OSError:
            pass
        todo.extend(children.get(pid, []))
    return None


@pytest.mark.parametrize("as_root", [False, True], ids=["uid-65532", "root-tmpfs"])
def test_both_images_publish_and_rotate_standalone(
    driver_image: Image, provider_image: Image, emulator: Emulator, tmp_path: Path, as_root: bool
) -> None:
    """The driver image in standalone mode, through the provider image's socket: the secret
    lands in the target directory, then follows a change in Key Vault. Not root, the driver
    writes into the directory; as root (with CAP_SYS_ADMIN, as the privileged DaemonSet
    container has it) it mounts a tmpfs there, seen through /proc/<pid>/root since the mount
    lives in the container's mount namespace."""
    name, value = _unique_secret(emulator)
    # the target is a directory inside the bind mount: standalone refuses a mount point
    sock_dir, out = tmp_path / "provider", tmp_path / "out"
    sock_dir.mkdir()
    out.mkdir()
    (out / "target").mkdir()
    spc = tmp_path / "spc.yaml"
    spc.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "secrets-store.csi.x-k8s.io/v1",
                "kind": "SecretProviderClass",
                "metadata": {"name": "image-spc", "namespace": "default"},
                "spec": {
                    "provider": "azure",
                    "parameters": {
                        "keyvaultName": VAULT,
                        "tenantId": TENANT_ID,
                        "objects": objects_yaml(
                            {"objectName": name, "objectType": "secret", "objectAlias": "app"}
                        ),
                    },
                },
            }
        )
    )
    creds = tmp_path / "sp.yaml"
    creds.write_text(yaml.safe_dump({"clientid": SP_READER_ID, "clientsecret": SP_READER_SECRET}))
    creds.chmod(0o600)
    if not as_root:
        for path in (out, out / "target", spc, creds):
            os.chown(path, UID, UID)
    provider_log, driver_log = tmp_path / "provider.log", tmp_path / "driver.log"
    with (
        provider_image.container() as pctr,
        _provider(provider_image, pctr, sock_dir, provider_log),
        driver_image.container() as dctr,
        driver_log.open("wb") as sink,
    ):
        argv = dctr.argv(
            [
                *driver_image.config["Entrypoint"],
                "standalone",
                "--spc=/config/spc.yaml",
                "--node-publish-secret-file=/config/sp.yaml",
                "--target-path=/out/target",
                "--provider-volume=/providers",
                "--rotation-poll-interval=1s",
            ],
            volumes=(
                f"{spc}:/config/spc.yaml:ro",
                f"{creds}:/config/sp.yaml:ro",
                f"{out}:/out",
                f"{sock_dir}:/providers",
            ),
            user=None if as_root else f"{UID}:{UID}",
            caps=("CAP_SYS_ADMIN",) if as_root else (),
        )
        proc = subprocess.Popen(argv, env=ENV, stdout=sink, stderr=subprocess.STDOUT)
        try:
            target = out / "target"
            if as_root:
                _wait_for(
                    lambda: _daemon_pid(proc.pid, "standalone") is not None,
                    30,
                    "driver process",
                    proc,
                    driver_log,
                )
                pid = _daemon_pid(proc.pid, "standalone")
                target = Path(f"/proc/{pid}/root/out/target")
            _wait_for(lambda: _read(target / "app") == value, 30, "first publish", proc, driver_log)
            emulator.set_secret(VAULT, name, value + "-v2")
            _wait_for(
                lambda: _read(target / "app") == value + "-v2", 15, "rotation", proc, driver_log
            )
            mounts = Path(f"/proc/{pid}/mountinfo").read_text() if as_root else ""
            on_tmpfs = any(
                line.split()[4] == "/out/target" and " - tmpfs " in line
                for line in mounts.splitlines()
            )
            assert on_tmpfs is as_root
            # on the test's side of the bind mount: files only when no tmpfs hides them
            assert (_read(out / "target" / "app") is not None) is not as_root
        finally:
            _stop(proc)
    logs = driver_log.read_text() + provider_log.read_text()
    assert value not in logs
