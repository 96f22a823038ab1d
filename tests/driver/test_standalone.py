"""Standalone mode (`python -m csi_driver.standalone`) against the real provider_azure and the
Key Vault emulator: mount, files and modes, rotation, SIGTERM, and bad input."""

from __future__ import annotations

import asyncio
import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx2 as httpx
import pytest
import yaml

from csi_driver import mounter, standalone
from csi_driver.intervals import INTERVAL_ANNOTATION
from testbed import REPO
from testbed.emulator import TENANT_ID, Emulator
from testbed.ports import free_port
from testbed.provider import ours

VAULT = "kv-standalone"
SP_CLIENT, SP_SECRET = "0d000003-0000-4000-8000-0000000000e1", "standalone-sp-secret"
OBJECTS = """array:
  - |
    objectName: username
    objectType: secret
    objectAlias: foo1
  - |
    objectName: signing-key
    objectType: key
  - |
    objectName: web-cert
    objectType: cert
  - |
    objectName: web-cert
    objectType: secret
    objectAlias: web-cert.pem
"""


def spc_manifest(**spec_overrides: object) -> dict[str, object]:
    spec: dict[str, object] = {
        "provider": "azure",
        "parameters": {
            "usePodIdentity": "false",
            "keyvaultName": VAULT,
            "tenantId": TENANT_ID,
            "objects": OBJECTS,
        },
    }
    spec.update(spec_overrides)
    return {
        "apiVersion": "secrets-store.csi.x-k8s.io/v1",
        "kind": "SecretProviderClass",
        "metadata": {"name": "azure-standalone", "namespace": "apps"},
        "spec": spec,
    }


@pytest.fixture(scope="module")
def vault(emulator: Emulator) -> Emulator:
    emulator.seed(
        {
            "identities": [
                {
                    "name": "standalone-sp",
                    "type": "servicePrincipal",
                    "clientId": SP_CLIENT,
                    "clientSecret": SP_SECRET,
                }
            ],
            "vaults": [
                {
                    "name": VAULT,
                    "tenant": TENANT_ID,
                    "roleAssignments": [
                        {"identity": "standalone-sp", "role": role}
                        for role in (
                            "Key Vault Secrets User",
                            "Key Vault Certificate User",
                            "Key Vault Crypto User",
                            "Key Vault Reader",
                        )
                    ],
                    "secrets": [{"name": "username", "value": "admin-v1"}],
                    "keys": [{"name": "signing-key", "kty": "RSA", "size": 2048}],
                    "certificates": [
                        {
                            "name": "web-cert",
                            "generate": {"subject": "CN=web.standalone.test", "kty": "RSA"},
                            "contentType": "application/x-pem-file",
                        }
                    ],
                }
            ],
        }
    )
    return emulator


@pytest.fixture(scope="module")
def provider_dir(root: Path, vault: Emulator) -> Iterator[Path]:
    d = root / "standalone-providers"
    d.mkdir(exist_ok=True)
    sock = d / "azure.sock"
    p = ours(sock, log=root / "standalone-provider.log")
    p.start()
    yield d
    p.stop()


@pytest.fixture
def work(tmp_path: Path) -> Path:
    (tmp_path / "target").mkdir()
    (tmp_path / "spc.yaml").write_text(yaml.safe_dump(spc_manifest()))
    (tmp_path / "secret.yaml").write_text(
        yaml.safe_dump({"clientid": SP_CLIENT, "clientsecret": SP_SECRET})
    )
    return tmp_path


def _start(work: Path, provider_dir: Path, *extra: str) -> tuple[subprocess.Popen[str], Path]:
    log = work / "standalone.log"
    with open(log, "w") as f:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "csi_driver.standalone",
                f"--spc={work / 'spc.yaml'}",
                f"--target-path={work / 'target'}",
                f"--node-publish-secret-file={work / 'secret.yaml'}",
                f"--provider-volume={provider_dir}",
                *extra,
            ],
            stdout=f,
            stderr=subprocess.STDOUT,
            cwd=REPO,
            text=True,
        )
    return proc, log


def _wait(cond: object, timeout: float, what: str, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise AssertionError(f"{what} within {timeout}s; log:\n{log.read_text()[-3000:]}")


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def test_mount_rotate_and_sigterm(vault: Emulator, provider_dir: Path, work: Path) -> None:
    port = free_port()
    proc, log = _start(
        work, provider_dir, "--rotation-poll-interval=1s", f"--metrics-addr=127.0.0.1:{port}"
    )
    target = work / "target"
    try:
        _wait(lambda: _read(target / "foo1") == "admin-v1", 20, "foo1 mounted", log)
        assert mounter.mount_points().get(str(target)) == "tmpfs"
        assert "mounting a tmpfs" in log.read_text()
        names = {p.name for p in target.iterdir() if not p.name.startswith("..")}
        assert names == {"foo1", "signing-key", "web-cert", "web-cert.pem"}
        for name in names:
            assert stat.S_IMODE((target / name).stat().st_mode) == 0o644
            assert (target / name).is_symlink()  # ..data/<name>: the atomic writer's layout
        assert "BEGIN CERTIFICATE" in (target / "web-cert").read_text()
        assert "PRIVATE KEY" in (target / "web-cert.pem").read_text()
        assert "BEGIN PUBLIC KEY" in (target / "signing-key").read_text()

        vault.set_secret(VAULT, "username", "admin-v2")
        changed = time.monotonic()
        _wait(lambda: _read(target / "foo1") == "admin-v2", 10, "rotation", log)
        assert time.monotonic() - changed < 5
        body = httpx.get(f"http://127.0.0.1:{port}/metrics").text
        assert 'node_publish_total{os_type="linux",provider="azure"} 1.0' in body
        assert 'rotation_reconcile_total{os_type="linux",provider="azure",rotated="true"}' in body
        assert SP_SECRET not in log.read_text()
    finally:
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(15)
    assert rc == 0, log.read_text()[-3000:]
    assert str(target) not in mounter.mount_points()
    assert target.is_dir() and list(target.iterdir()) == []
    assert "nothing left mounted" in log.read_text()


def test_each_file_keeps_its_own_mode(vault: Emulator, provider_dir: Path, work: Path) -> None:
    """Guard (issue 19): per-object filePermission reaches the files, not only 0644; through
    the real provider and a rotation (a rewrite keeps each mode)."""
    objects = OBJECTS.replace("objectAlias: foo1", "objectAlias: foo1\n    filePermission: '0400'")
    objects = objects.replace("objectType: key", "objectType: key\n    filePermission: '0440'")
    manifest = spc_manifest()
    manifest["spec"]["parameters"]["objects"] = objects  # type: ignore[index]
    (work / "spc.yaml").write_text(yaml.safe_dump(manifest))
    proc, log = _start(work, provider_dir, "--rotation-poll-interval=200ms")
    target = work / "target"
    want = {"foo1": 0o400, "signing-key": 0o440, "web-cert": 0o644}
    try:
        _wait(lambda: (target / "foo1").exists(), 20, "foo1 mounted", log)
        _wait(lambda: "rotation tick" in log.read_text(), 10, "a rotation tick", log)
        assert {n: stat.S_IMODE((target / n).stat().st_mode) for n in want} == want
    finally:
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(15)
    assert rc == 0, log.read_text()[-3000:]


def test_sigint_during_rotation_leaves_nothing(
    vault: Emulator, provider_dir: Path, work: Path
) -> None:
    proc, log = _start(work, provider_dir, "--rotation-poll-interval=100ms")
    target = work / "target"
    try:
        _wait(lambda: (target / "foo1").exists(), 20, "foo1 mounted", log)
        time.sleep(0.3)  # a few ticks in
    finally:
        proc.send_signal(signal.SIGINT)
        rc = proc.wait(15)
    assert rc == 0, log.read_text()[-3000:]
    assert str(target) not in mounter.mount_points()
    assert list(target.iterdir()) == []


async def test_not_root_private_directory(
    vault: Emulator, provider_dir: Path, work: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without root: no tmpfs, a 0700 directory, said in a warning; same files."""
    monkeypatch.setattr(standalone.os, "geteuid", lambda: 1000)
    target = work / "target"
    config = standalone.StandaloneConfig(
        spc_file=str(work / "spc.yaml"),
        target_path=str(target),
        secrets_file=str(work / "secret.yaml"),
        provider_paths=(str(provider_dir),),
        rotation_poll_interval=60,
    )
    stop = asyncio.Event()
    app = standalone.Standalone(config)
    task = asyncio.create_task(app.run(stop))
    for _ in range(400):
        if (target / "foo1").exists():
            break
        await asyncio.sleep(0.05)
    assert (target / "foo1").read_text() in ("admin-v1", "admin-v2")
    assert stat.S_IMODE(target.stat().st_mode) == 0o700
    assert str(target) not in mounter.mount_points()
    stop.set()
    await asyncio.wait_for(task, 15)
    assert list(target.iterdir()) == []


# ---- bad input -------------------------------------------------------------------------


def _config(work: Path, **kw: object) -> standalone.StandaloneConfig:
    args: dict[str, object] = {
        "spc_file": str(work / "spc.yaml"),
        "target_path": str(work / "target"),
        "provider_paths": (str(work / "no-providers"),),
    }
    args.update(kw)
    return standalone.StandaloneConfig(**args)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "spc.yaml: not found"),
        ("kind: [unclosed", "not valid YAML"),
        ("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n", "no object of kind"),
        (yaml.safe_dump(spc_manifest(provider="")), "provider not set in apps/azure-standalone"),
        (yaml.safe_dump(spc_manifest(parameters={})), "parameters not set in apps/"),
        (
            yaml.safe_dump(spc_manifest(parameters={"keyvaultName": 3})),
            "spec.parameters.keyvaultName must be a string",
        ),
        (
            yaml.safe_dump(spc_manifest()).replace("/v1", "/v9"),
            "apiVersion 'secrets-store.csi.x-k8s.io/v9'",
        ),
    ],
    ids=["missing", "not-yaml", "wrong-kind", "no-provider", "no-parameters", "int", "version"],
)
def test_bad_spc_file(work: Path, content: str | None, message: str) -> None:
    spc = work / "spc.yaml"
    if content is None:
        spc.unlink()
    else:
        spc.write_text(content)
    with pytest.raises(standalone.StandaloneError, match=message.replace("[", r"\[")):
        standalone.Standalone(_config(work))


def test_target_not_a_directory(work: Path) -> None:
    (work / "file").write_text("x")
    with pytest.raises(standalone.StandaloneError, match="file is not a directory"):
        standalone.Standalone(_config(work, target_path=str(work / "file")))
    with pytest.raises(standalone.StandaloneError, match="does not exist"):
        standalone.Standalone(_config(work, target_path=str(work / "nope")))
    (work / "target" / "keep").write_text("mine")
    with pytest.raises(standalone.StandaloneError, match="is not empty"):
        standalone.Standalone(_config(work))


def test_bad_secrets(work: Path) -> None:
    (work / "secret.yaml").write_text("- a\n- b\n")
    with pytest.raises(standalone.StandaloneError, match="want a map"):
        standalone.load_secrets(str(work / "secret.yaml"))
    secret = {"kind": "Secret", "data": {"clientid": "aWQ="}, "stringData": {"clientsecret": "s"}}
    (work / "secret.yaml").write_text(yaml.safe_dump(secret))
    assert standalone.load_secrets(str(work / "secret.yaml")) == {
        "clientid": "id",
        "clientsecret": "s",
    }
    env = {standalone.SECRET_ENV: '{"clientid": "x"}'}
    assert standalone.load_secrets("", env) == {"clientid": "x"}


def test_provider_socket_missing(work: Path) -> None:
    """The process exits 1 naming the socket and the directories searched; nothing mounted."""
    (work / "no-providers").mkdir()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "csi_driver",
            "standalone",  # through the console script's entry point
            f"--spc={work / 'spc.yaml'}",
            f"--target-path={work / 'target'}",
            f"--provider-volume={work / 'no-providers'}",
            "--additional-provider-volume-paths=",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 1, proc.stderr
    assert f'provider not found: provider "azure": no azure.sock in {work}/no-providers' in (
        proc.stderr
    )
    assert str(work / "target") not in mounter.mount_points()
    assert os.listdir(work / "target") == []


def test_flags() -> None:
    with pytest.raises(standalone.FlagError, match="-spc is required"):
        standalone.parse_args(["--target-path=/x"])
    with pytest.raises(standalone.FlagError, match="invalid duration"):
        standalone.parse_args(["--spc=a", "--target-path=/x", "--rotation-poll-interval=2"])
    config = standalone.parse_args(
        ["--spc=a", "--target-path=/x", "--rotation-poll-interval=1m30s"]
    )
    assert config is not None and config.rotation_poll_interval == 90.0


def test_publish_failure_exits_1_and_unmounts(
    vault: Emulator, provider_dir: Path, work: Path
) -> None:
    """Key Vault refuses (wrong client secret): the driver's publish message, exit 1, no mount."""
    (work / "secret.yaml").write_text(
        yaml.safe_dump({"clientid": SP_CLIENT, "clientsecret": "wrong-secret"})
    )
    proc, log = _start(work, provider_dir)
    rc = proc.wait(60)
    text = log.read_text()
    assert rc == 1, text[-3000:]
    assert "publish failed" in text and "failed to mount secrets store objects" in text
    assert "unmounted target path" in text
    assert str(work / "target") not in mounter.mount_points()
    assert os.listdir(work / "target") == []
    assert "wrong-secret" not in text


def test_spc_file_edits_apply_at_next_tick_and_a_bad_edit_keeps_content(
    vault: Emulator, provider_dir: Path, work: Path
) -> None:
    proc, log = _start(work, provider_dir, "--rotation-poll-interval=200ms")
    target = work / "target"
    try:
        _wait(lambda: (target / "foo1").exists(), 20, "foo1 mounted", log)
        (work / "spc.yaml").write_text("kind: [unclosed")
        _wait(lambda: "content kept" in log.read_text(), 10, "a failed tick", log)
        assert "not valid YAML" in log.read_text()
        assert (target / "foo1").exists() and proc.poll() is None
        edited = spc_manifest()
        params = edited["spec"]["parameters"]  # type: ignore[index]
        params["objects"] = OBJECTS.replace("objectAlias: foo1", "objectAlias: foo2")
        (work / "spc.yaml").write_text(yaml.safe_dump(edited))
        _wait(lambda: (target / "foo2").exists(), 10, "foo2 after the edit", log)
        _wait(lambda: not (target / "foo1").exists(), 5, "foo1 gone after the edit", log)
    finally:
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(15)
    assert rc == 0, log.read_text()[-3000:]
    assert str(target) not in mounter.mount_points()


def test_spc_file_annotation_sets_the_interval(
    vault: Emulator, provider_dir: Path, work: Path
) -> None:
    """The SPC file's metadata.annotations carry the class's own interval, as in a cluster:
    global 1h, the file asks for 1s (minimum 500ms); a bad value is logged and ignored."""
    annotated = spc_manifest()
    meta = annotated["metadata"]
    meta["annotations"] = {INTERVAL_ANNOTATION: "1s"}  # type: ignore[index]
    (work / "spc.yaml").write_text(yaml.safe_dump(annotated))
    proc, log = _start(
        work, provider_dir, "--rotation-poll-interval=1h", "--min-rotation-poll-interval=500ms"
    )
    target = work / "target"
    try:
        _wait(lambda: _read(target / "foo1") != "", 20, "foo1 mounted", log)
        vault.set_secret(VAULT, "username", "admin-v3")
        _wait(lambda: _read(target / "foo1") == "admin-v3", 9, "rotated on the file's 1s", log)
        meta["annotations"] = {INTERVAL_ANNOTATION: "soon"}  # type: ignore[index]
        (work / "spc.yaml").write_text(yaml.safe_dump(annotated))
        _wait(lambda: '"soon"' in log.read_text(), 8, "the bad value logged", log)
        assert "using --rotation-poll-interval" in log.read_text()
    finally:
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(15)
    assert rc == 0, log.read_text()[-3000:]
