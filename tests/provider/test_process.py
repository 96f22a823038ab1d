"""End to end: `python -m provider_azure` over its unix socket, with exactly what the upstream
driver sends; health, metrics, logs without secrets, stale socket, SIGTERM."""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.request
from pathlib import Path

import grpc
import pytest

from testbed.emulator import workload_token
from testbed.mount_attributes import attributes, objects_yaml
from testbed.provider import ours
from testbed.trust import SYSTEM_CERT_DIR, image_trust_env

from .conftest import SP_SECRET, WI_APP, ProviderWorld


def test_mount_over_socket_like_the_driver(tmp_path: Path, world: ProviderWorld) -> None:
    sock = tmp_path / "azure.sock"
    sock.write_text("stale")  # a leftover from a previous run is replaced
    log = tmp_path / "provider.log"
    token = workload_token()
    proc = ours(
        str(sock),
        "--log-format-json",
        "-v=5",
        healthz_port=28989,
        prometheus_port=28898,
        log=log,
    )
    proc.start()
    try:
        version = proc.stub.Version(
            __import__("secrets_store_api.provider_pb2", fromlist=["x"]).VersionRequest(
                version="v1alpha1"
            )
        )
        assert version.runtime_name == "secrets-store-csi-driver-provider-azure"
        objects = objects_yaml(
            {"objectName": "plain", "objectType": "secret"},
            {"objectName": "ec-pem", "objectType": "cert", "filePermission": "0440"},
        )
        attrib = attributes(
            vault=world.vault,
            tenant=world.tenant,
            objects=objects,
            clientID=WI_APP,
            tokens={"api://AzureADTokenExchange": token, "other": "x.y.z"},
        )
        response = proc.mount(attrib, None, permission="420")  # secrets: "null"
        assert [(f.path, f.mode) for f in response.files] == [("plain", 0o644), ("ec-pem", 0o440)]
        assert response.files[0].contents == b"plain-value"
        assert [v.id for v in response.object_version] == ["secret/plain", "cert/ec-pem"]
        # The provider's HTTP is its own transport (http_transport.py): aiohttp, whose C
        # extensions would be mapped once imported, is never loaded without a proxy.
        assert proc.proc is not None
        maps = Path(f"/proc/{proc.proc.pid}/maps").read_text()
        assert "/aiohttp/" not in maps and "/multidict/" not in maps

        with urllib.request.urlopen("http://127.0.0.1:28989/healthz", timeout=5) as r:
            assert r.status == 200 and r.read() == b"ok"
        with urllib.request.urlopen("http://127.0.0.1:28898/metrics", timeout=5) as r:
            metrics = r.read().decode()
        assert "keyvault_request_count{" in metrics and 'object_name="plain"' in metrics
        assert "grpc_request_count{" in metrics and 'grpc_code="OK"' in metrics
        assert 'grpc_method="/v1alpha1.CSIDriverProvider/Mount"' in metrics
        assert "_created" not in metrics  # upstream's exporter has no creation-time gauges

        # A failing mount with a client secret: the secret is never echoed or logged.
        bad = attributes(
            vault=world.vault,
            tenant=world.tenant,
            objects=objects_yaml({"objectName": "nope", "objectType": "secret"}),
        )
        with pytest.raises(grpc.RpcError) as info:
            proc.mount(bad, {"clientid": "x", "clientsecret": SP_SECRET})
        failure = info.value
        assert isinstance(failure, grpc.Call)
        assert failure.code() is grpc.StatusCode.UNAUTHENTICATED, failure  # unknown client id
        assert "objectName:nope" in (failure.details() or "") and "AADSTS700016" in (
            failure.details() or ""
        ), failure.details()
        assert SP_SECRET not in (failure.details() or "") and SP_SECRET not in str(failure)
    finally:
        code = proc.stop()
    assert code == 0
    assert not sock.exists()  # removed on SIGTERM
    text = log.read_text()
    for secret in (token, "plain-value", SP_SECRET, "BEGIN"):
        assert secret not in text
    lines = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    assert any(line.get("msg") == "mount" and line.get("files") == 2 for line in lines)


def _verifies_emulator(tmp_path: Path, world: ProviderWorld, env: dict[str, str]) -> bool:
    """A provider started with `env` mounts a secret (True), or fails certificate
    verification (False); anything else fails the test."""
    proc = ours(str(tmp_path / "azure.sock"), log=tmp_path / "provider.log", env=env)
    attrib = attributes(
        vault=world.vault,
        tenant=world.tenant,
        objects=objects_yaml({"objectName": "plain", "objectType": "secret"}),
    )
    with proc:
        try:
            return proc.mount(attrib, world.secrets).files[0].contents == b"plain-value"
        except grpc.RpcError as exc:
            assert isinstance(exc, grpc.Call)
            assert "CERTIFICATE_VERIFY_FAILED" in (exc.details() or ""), exc.details()
            return False


@pytest.mark.parametrize("emulator_ca_listed", [True, False])
def test_mount_with_the_image_trust(
    tmp_path: Path, world: ProviderWorld, emulator_ca_listed: bool
) -> None:
    """The provider image's trust (no bundle file, hashed directories; testbed/trust.py): a
    Mount reaches the emulator when its CA is in a listed directory, and fails certificate
    verification when only the system's directory is listed."""
    env = image_trust_env(world.emulator.ca_path, tmp_path / "certs")
    if not emulator_ca_listed:
        env["SSL_CERT_DIR"] = SYSTEM_CERT_DIR
    assert _verifies_emulator(tmp_path, world, env) is emulator_ca_listed


@pytest.mark.parametrize("mounted", [True, False])
def test_mounted_bundle_is_read_under_the_image_trust(
    tmp_path: Path, world: ProviderWorld, mounted: bool
) -> None:
    """Upstream's custom-cloud recipe (a node's /etc/ssl/certs mounted into the provider pod)
    under the image's no-bundle setting: a directory of SSL_CERT_DIR that is a mount has its
    bundle read (here an unhashed ca-certificates.crt holding the emulator's CA), so the Mount
    verifies; the same directory not mounted keeps the image's setting and fails to verify."""
    certs = tmp_path / "node-certs"
    certs.mkdir()
    if mounted:
        subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(certs)], check=True)
    try:
        shutil.copyfile(world.emulator.ca_path, certs / "ca-certificates.crt")
        env = {"SSL_CERT_FILE": "/dev/null", "SSL_CERT_DIR": f"{certs}:{SYSTEM_CERT_DIR}"}
        assert _verifies_emulator(tmp_path, world, env) is mounted
    finally:
        if mounted:
            subprocess.run(["umount", str(certs)], check=True)
    log = (tmp_path / "provider.log").read_text()
    assert ("reading the mounted CA bundle" in log) is mounted
