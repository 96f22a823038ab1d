"""A second emulator of our own (port 8443, IMDS off): --persist across restarts, the `seed`
subcommand, a bad seed at start, and logs that hold no secret values or tokens."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from testbed import emulator as t
from testbed.emulator import Emulator, EmulatorError
from testbed.kvhttp import validate

PORT = 8443
BASE = f"https://kv-test.vault.azure.net:{PORT}"
FIXTURES = Path(__file__).parent / "fixtures"


SMALL_SEED = f"""
tenants: [{t.TENANT_ID}]
identities:
  - {{name: sp-officer, clientId: {t.SP_OFFICER_ID}, clientSecret: {t.SP_OFFICER_SECRET}}}
  - {{name: sp-reader, clientId: {t.SP_READER_ID}, clientSecret: {t.SP_READER_SECRET}}}
vaults:
  - name: kv-test
    roleAssignments:
      - {{identity: sp-officer, role: Key Vault Administrator}}
      - {{identity: sp-reader, role: Key Vault Secrets User}}
    secrets:
      - {{name: plain, value: plain-v2}}
"""


def start(state: Path, *extra: str, seeds: tuple[Path, ...] = ()) -> Emulator:
    small = state / "small-seed.yaml"
    small.write_text(SMALL_SEED)
    return Emulator.start(
        state, seeds=(small, *seeds), port=PORT, imds_port=0, extra_args=extra, timeout=60
    )


def call(
    emu: Emulator, method: str, path: str, body: object = None, identity: str = t.SP_OFFICER_ID
) -> requests.Response:
    return requests.request(
        method,
        f"{BASE}{path}",
        params={"api-version": "7.6"},
        headers={"Authorization": f"Bearer {emu.token(identity)}"},
        json=body,
        timeout=10,
        verify=str(emu.ca_path),
    )


@pytest.fixture
def state(tmp_path: Path, emulator: Emulator) -> Iterator[Path]:
    # same CA as the session's emulator, so the trust bundle already covers it
    d = tmp_path / "state"
    d.mkdir()
    for name in ("ca.pem", "ca-key.pem"):
        (d / name).write_bytes((emulator.state_dir / name).read_bytes())
    yield d


def test_persist_across_restart(state: Path) -> None:
    persist = state / "saved.json"
    emu = start(state, "--persist", str(persist))
    try:
        body = call(emu, "PUT", "/secrets/kept", {"value": "survives", "tags": {"a": "b"}}).json()
        assert body["id"].startswith(f"{BASE}/secrets/kept/")  # ids carry the port used
        version = body["id"].rsplit("/", 1)[1]
        key = call(emu, "POST", "/keys/kept-key/create", {"kty": "EC", "crv": "P-256"}).json()
        assert call(emu, "DELETE", "/secrets/plain").status_code == 200
        pem = (FIXTURES / "rsa-chain.pem").read_text()
        cert = call(emu, "POST", "/certificates/kept-cert/import", {"value": pem}).json()
    finally:
        emu.stop()
    assert stat.S_IMODE(persist.stat().st_mode) == 0o600
    emu = start(state, "--persist", str(persist))
    try:
        got = call(emu, "GET", f"/secrets/kept/{version}").json()
        assert got["value"] == "survives" and got["tags"] == {"a": "b"}
        again = call(emu, "GET", "/keys/kept-key").json()
        assert again["key"]["x"] == key["key"]["x"]
        validate("KeyBundle", again)
        assert call(emu, "GET", "/secrets/plain").status_code == 404
        assert call(emu, "GET", "/deletedsecrets/plain").status_code == 200
        c = call(emu, "GET", "/certificates/kept-cert").json()
        assert c["cer"] == cert["cer"]
        assert call(emu, "GET", "/secrets/kept-cert").json()["value"].startswith("-----BEGIN")
    finally:
        emu.stop()


def test_seed_subcommand_and_logs(state: Path, tmp_path: Path) -> None:
    emu = start(state, "--log-level", "debug")
    try:
        extra = tmp_path / "extra.yaml"
        extra.write_text(
            "vaults:\n  - name: kv-test\n    secrets:\n"
            "      - {name: from-cli, value: cli-value-123}\n"
        )
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "keyvault_emulator",
                "seed",
                str(extra),
                "--admin-url",
                f"https://127.0.0.1:{PORT}",
                "--ca",
                str(emu.ca_path),
            ],
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        )
        assert json.loads(out.stdout)["added"]["objects"] == 1
        assert call(emu, "GET", "/secrets/from-cli").json()["value"] == "cli-value-123"
        token = emu.token(t.SP_READER_ID)
        requests.get(
            f"{BASE}/secrets/plain",
            params={"api-version": "7.6"},
            headers={"Authorization": f"Bearer {token}"},
            timeout=10,
            verify=str(emu.ca_path),
        )
    finally:
        emu.stop()
    log = emu.log_path.read_text()
    assert '"msg": "ready"' in log
    for secret in ("cli-value-123", "plain-v2", "officer-secret", token):
        assert secret not in log
    lines = [json.loads(x) for x in log.splitlines() if x.startswith("{")]
    reqs = [x for x in lines if x.get("msg") == "request" and x.get("path") == "/secrets/plain"]
    assert reqs and reqs[-1]["status"] == 200 and reqs[-1]["identity"] == t.SP_READER_ID


def test_bad_seed_fails_start(state: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("vaults:\n  - name: kv-x\n    secrets:\n      - {name: bad_name, value: v}\n")
    with pytest.raises(EmulatorError, match="not a valid Key Vault name"):
        start(state, seeds=(bad,))


def test_port_in_use_fails_start(state: Path) -> None:
    with pytest.raises(EmulatorError, match="cannot listen"):
        Emulator.start(state, port=443, imds_port=0, timeout=30)
