"""Faults, latency, the request log and counters, through the admin API and the real SDK."""

from __future__ import annotations

import time
import uuid

import pytest
import requests
from azure.core.exceptions import ServiceRequestError, ServiceResponseError
from azure.identity import ClientSecretCredential
from azure.keyvault.secrets import SecretClient

from testbed import emulator as t
from testbed.emulator import Emulator, EmulatorError
from testbed.kvhttp import Raw, validate

from .conftest import KV_TEST


@pytest.fixture(autouse=True)
def clean(emulator: Emulator):  # type: ignore[no-untyped-def]
    emulator.clear_faults()
    yield
    emulator.clear_faults()
    emulator.set_latency(0)


def test_status_with_retry_after_and_count(emulator: Emulator) -> None:
    rule = emulator.add_fault(
        service="kv", method="GET", path=r"^/secrets/plain$", status=429, retry_after=7, count=2
    )
    raw = Raw(emulator, t.SP_READER_ID)
    for _ in range(2):
        resp = raw.call("GET", "/secrets/plain")
        assert resp.status_code == 429 and resp.headers["Retry-After"] == "7"
        validate("KeyVaultError", resp.json())
        assert resp.json()["error"]["code"] == "Throttled"
    assert raw.call("GET", "/secrets/plain").status_code == 200
    assert emulator.faults()[0]["hits"] == 2 and emulator.faults()[0]["id"] == rule["id"]


def test_fault_by_identity_and_vault(emulator: Emulator) -> None:
    emulator.add_fault(service="kv", identity=t.SP_READER_ID, vault="kv-test", status=503)
    assert Raw(emulator, t.SP_READER_ID).call("GET", "/secrets/plain").status_code == 503
    assert Raw(emulator, t.SP_OFFICER_ID).call("GET", "/secrets/plain").status_code == 200
    assert (
        Raw(emulator, t.SP_READER_ID, vault="kv-custom")
        .call("GET", "/secrets/custom-secret")
        .status_code
        == 200
    )


def test_sdk_retries_through_a_transient_fault(emulator: Emulator) -> None:
    emulator.clear_requests()
    emulator.add_fault(service="kv", path="^/secrets/typed", status=503, retry_after=0, count=1)
    cred = ClientSecretCredential(t.TENANT_ID, t.SP_READER_ID, t.SP_READER_SECRET)
    client = SecretClient(KV_TEST, cred)
    assert client.get_secret("typed").properties.content_type == "application/json"
    statuses = [
        r["status"]
        for r in emulator.requests(service="kv")
        if r["path"].startswith("/secrets/typed")
    ]
    assert 503 in statuses and statuses[-1] == 200


def test_entra_fault(emulator: Emulator) -> None:
    emulator.add_fault(
        service="entra", path="/oauth2/v2.0/token$", identity=t.SP_NOROLE_ID, status=500, count=1
    )
    resp = requests.post(
        f"https://login.microsoftonline.com/{t.TENANT_ID}/oauth2/v2.0/token",
        data={
            "grant_type": "client_credentials",
            "client_id": t.SP_NOROLE_ID,
            "client_secret": t.SP_NOROLE_SECRET,
            "scope": "https://vault.azure.net/.default",
        },
        timeout=10,
    )
    assert resp.status_code == 500


def test_imds_fault(emulator: Emulator) -> None:
    emulator.add_fault(service="imds", status=429, retry_after=1, count=1)
    url = "http://169.254.169.254/metadata/identity/oauth2/token"
    params = {"api-version": "2018-02-01", "resource": "https://vault.azure.net"}
    first = requests.get(url, params=params, headers={"Metadata": "true"}, timeout=10)
    assert first.status_code == 429 and first.headers["Retry-After"] == "1"
    assert requests.get(url, params=params, headers={"Metadata": "true"}, timeout=10).ok


def test_delay_and_drop(emulator: Emulator) -> None:
    raw = Raw(emulator, t.SP_READER_ID)
    emulator.add_fault(service="kv", path="^/secrets/plain$", delay_ms=150, count=1)
    start = time.monotonic()
    assert raw.call("GET", "/secrets/plain").status_code == 200
    assert time.monotonic() - start >= 0.15
    rule = emulator.add_fault(service="kv", path="^/secrets/plain$", drop=True, count=1)
    with pytest.raises(requests.ConnectionError):
        requests.get(
            "https://kv-test.vault.azure.net/secrets/plain?api-version=7.6",
            headers={"Authorization": f"Bearer {raw.token}"},
            timeout=10,
        )
    dropped = [r for r in emulator.requests(service="kv") if r["fault"] == rule["id"]]
    assert [r["status"] for r in dropped] == [0]
    assert raw.call("GET", "/secrets/plain").status_code == 200


def test_sdk_sees_a_dropped_connection(emulator: Emulator) -> None:
    emulator.add_fault(service="kv", path="^/secrets/plain", drop=True)
    cred = ClientSecretCredential(t.TENANT_ID, t.SP_READER_ID, t.SP_READER_SECRET)
    client = SecretClient(KV_TEST, cred, retry_total=1, retry_backoff_factor=0.01)
    # a dropped connection, not an HTTP answer (an error status would also be "an error")
    with pytest.raises((ServiceRequestError, ServiceResponseError)):
        client.get_secret("plain")


def test_latency(emulator: Emulator) -> None:
    raw = Raw(emulator, t.SP_READER_ID)
    raw.call("GET", "/secrets/plain")  # warm the connection
    emulator.set_latency(120)
    start = time.monotonic()
    assert raw.call("GET", "/secrets/plain").status_code == 200
    assert time.monotonic() - start >= 0.12
    emulator.set_latency(0)
    start = time.monotonic()
    raw.call("GET", "/secrets/plain")
    assert time.monotonic() - start < 0.12


def test_request_log_and_counters(emulator: Emulator) -> None:
    emulator.clear_requests()
    cred = ClientSecretCredential(t.TENANT_ID, t.SP_READER_ID, t.SP_READER_SECRET)
    client = SecretClient(KV_TEST, cred)
    for _ in range(3):
        client.get_secret("plain")
    log = emulator.requests()
    kv = [r for r in log if r["service"] == "kv"]
    # the SDK's challenge cache is per process: a 401 challenge only if no test made one before
    statuses = [r["status"] for r in kv]
    assert statuses[-3:] == [200, 200, 200] and set(statuses[:-3]) <= {401}
    assert {r["vault"] for r in kv} == {"kv-test"}
    assert kv[-1]["identity"] == t.SP_READER_ID and kv[-1]["route"] == "/secrets/{name}/{version?}"
    entra = [r for r in log if r["service"] == "entra"]
    assert [r["route"] for r in entra][-1] == "/{tenant}/oauth2/v2.0/token"
    counters = emulator.counters()
    assert counters["by_route"]["kv GET /secrets/{name}/{version?}"] == len(kv)
    assert counters["by_vault"]["kv-test"] == len(kv)
    assert counters["by_status"]["200"] >= 3
    emulator.clear_requests()
    assert emulator.counters()["total"] == 0 and emulator.requests() == []


def test_bad_fault_rules(emulator: Emulator) -> None:
    for rule in (
        {"service": "dns", "status": 500},
        {"service": "kv"},
        {"status": 99},
        {"status": 500, "path": "("},
        {"status": 500, "colour": "red"},
    ):
        with pytest.raises(EmulatorError, match="400"):
            emulator.add_fault(**rule)


def test_operator_set_secret(emulator: Emulator) -> None:
    name = f"op-{uuid.uuid4().hex[:8]}"
    version = emulator.set_secret("kv-test", name, "operator-value", contentType="text/plain")
    got = Raw(emulator, t.SP_READER_ID).call("GET", f"/secrets/{name}/{version}").json()
    assert got["value"] == "operator-value" and got["contentType"] == "text/plain"
    emulator.set_secret_enabled("kv-test", name, version, False)
    assert Raw(emulator, t.SP_READER_ID).call("GET", f"/secrets/{name}").status_code == 403


def test_seed_errors_name_the_entry(emulator: Emulator) -> None:
    with pytest.raises(
        EmulatorError, match=r"vaults\[0\].secrets\[0\].versions\[0\]: needs a value"
    ):
        emulator.seed(
            {"vaults": [{"name": "kv-test", "secrets": [{"name": "x", "versions": [{}]}]}]}
        )
    with pytest.raises(EmulatorError, match="unknown role"):
        emulator.seed(
            {
                "vaults": [
                    {
                        "name": "kv-test",
                        "roleAssignments": [{"identity": "sp-reader", "role": "Key Vault Wizard"}],
                    }
                ]
            }
        )


def test_throttle(emulator: Emulator) -> None:
    raw = Raw(emulator, t.SP_READER_ID, vault="kv-custom")
    emulator.set_throttle(3, window_seconds=30)
    try:
        assert [raw.call("GET", "/secrets/custom-secret").status_code for _ in range(3)] == [
            200
        ] * 3
        resp = raw.call("GET", "/secrets/custom-secret")
        assert resp.status_code == 429
        assert 1 <= int(resp.headers["Retry-After"]) <= 30
        validate("KeyVaultError", resp.json())
        assert resp.json()["error"]["code"] == "Throttled"
        # per vault: another vault is not affected
        assert Raw(emulator, t.SP_READER_ID).call("GET", "/secrets/plain").status_code == 200
    finally:
        emulator.set_throttle(0)
    assert raw.call("GET", "/secrets/custom-secret").status_code == 200
