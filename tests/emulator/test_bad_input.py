"""Every bad-input row of issue 7: Key Vault's status and error code, raw, bodies validated."""

from __future__ import annotations

import base64
import time
import uuid
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from testbed import emulator as t
from testbed.emulator import Emulator
from testbed.kvhttp import Raw

FIXTURES = Path(__file__).parent / "fixtures"
MISSING_VERSION = "ffffffffffffffffffffffffffffffff"


@pytest.fixture(scope="module")
def officer_raw(emulator: Emulator) -> Raw:
    return Raw(emulator, t.SP_OFFICER_ID)


@pytest.fixture(scope="module")
def reader_raw(emulator: Emulator) -> Raw:
    return Raw(emulator, t.SP_READER_ID)


# --- 404 -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "code", "noun"),
    [
        ("/secrets/no-such-secret", "SecretNotFound", "A secret with (name/id) no-such-secret"),
        (
            f"/secrets/plain/{MISSING_VERSION}",
            "SecretNotFound",
            f"A secret with (name/id) plain/{MISSING_VERSION}",
        ),
        ("/keys/no-such-key", "KeyNotFound", "A key with (name/id) no-such-key"),
        (f"/keys/rsa-key/{MISSING_VERSION}", "KeyNotFound", "A key with (name/id) rsa-key/"),
        (
            "/certificates/no-such-cert",
            "CertificateNotFound",
            "A certificate with (name/id) no-such-cert",
        ),
        (
            f"/certificates/cert-pem/{MISSING_VERSION}",
            "CertificateNotFound",
            "A certificate with (name/id) cert-pem/",
        ),
        ("/secrets/no-such-secret/versions", "SecretNotFound", "A secret with (name/id)"),
    ],
)
def test_not_found(officer_raw: Raw, path: str, code: str, noun: str) -> None:
    body = officer_raw.error("GET", path, 404, code)
    assert body["error"]["message"].startswith(noun)
    assert "was not found in this key vault" in body["error"]["message"]


def test_unknown_vault(emulator: Emulator) -> None:
    # kv-pem is a name the namespace resolves but no seed creates
    raw = Raw(emulator, t.SP_OFFICER_ID, vault="kv-pem")
    raw.error("GET", "/secrets/x", 404, "VaultNotFound")


# --- 403 -----------------------------------------------------------------------------------


def test_disabled_version(reader_raw: Raw) -> None:
    body = reader_raw.error(
        "GET", "/secrets/disabled-latest", 403, "Forbidden", inner="SecretDisabled"
    )
    assert body["error"]["message"] == "Operation get is not allowed on a disabled secret."
    reader_raw.error(
        "GET",
        "/secrets/disabled-latest/0000000000000000000000000000000b",
        403,
        "Forbidden",
        inner="SecretDisabled",
    )
    ok = reader_raw.call("GET", "/secrets/disabled-latest/0000000000000000000000000000000a")
    assert ok.status_code == 200


@pytest.mark.parametrize(
    ("identity", "vault", "method", "path", "body", "action"),
    [
        (
            t.SP_READER_ID,
            "kv-test",
            "PUT",
            "/secrets/new-one",
            {"value": "x"},
            "Microsoft.KeyVault/vaults/secrets/setSecret/action",
        ),
        (
            t.SP_NOROLE_ID,
            "kv-test",
            "GET",
            "/secrets/plain",
            None,
            "Microsoft.KeyVault/vaults/secrets/getSecret/action",
        ),
        (
            t.SP_READER_ID,
            "kv-denied",
            "GET",
            "/secrets/denied-secret",
            None,
            "Microsoft.KeyVault/vaults/secrets/getSecret/action",
        ),
        (
            t.SP_READER_ID,
            "kv-test",
            "POST",
            "/keys/new-key/create",
            {"kty": "RSA"},
            "Microsoft.KeyVault/vaults/keys/create/action",
        ),
        (
            t.SP_READER_ID,
            "kv-test",
            "DELETE",
            "/certificates/cert-pem",
            None,
            "Microsoft.KeyVault/vaults/certificates/delete",
        ),
        (
            t.MI_SYSTEM_CLIENT_ID,
            "kv-other",
            "GET",
            "/secrets/other-secret",
            None,
            "Microsoft.KeyVault/vaults/secrets/getSecret/action",
        ),
    ],
    ids=[
        "reader-sets",
        "no-role",
        "other-vault",
        "reader-creates-key",
        "reader-deletes-cert",
        "mi-other-vault",
    ],
)
def test_forbidden_by_rbac(
    emulator: Emulator, identity: str, vault: str, method: str, path: str, body: object, action: str
) -> None:
    raw = Raw(emulator, identity, vault=vault)
    err = raw.error(method, path, 403, "Forbidden", body=body, inner="ForbiddenByRbac")
    assert f"Action: '{action}'" in err["error"]["message"]
    assert "Caller is not authorized to perform action on resource." in err["error"]["message"]


def test_certificate_private_key_needs_a_secrets_role(emulator: Emulator) -> None:
    name = f"rbac-{uuid.uuid4().hex[:8]}"
    emulator.seed(
        {
            "identities": [{"name": name, "clientId": str(uuid.uuid4()), "clientSecret": "s"}],
            "vaults": [
                {
                    "name": "kv-test",
                    "roleAssignments": [
                        {"identity": name, "role": "Key Vault Certificates Officer"},
                        {"identity": name, "role": "Key Vault Reader"},
                    ],
                }
            ],
        }
    )
    raw = Raw(emulator, name)
    assert raw.call("GET", "/certificates/cert-pem").status_code == 200
    assert raw.call("GET", "/keys/cert-pem").status_code == 200
    assert raw.call("GET", "/secrets").status_code == 200  # metadata
    raw.error("GET", "/secrets/cert-pem", 403, "Forbidden", inner="ForbiddenByRbac")


# --- 400 -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", "/secrets/bad_name", None),
        ("PUT", "/secrets/bad.name", {"value": "x"}),
        ("GET", "/keys/" + "a" * 128, None),
        ("POST", "/certificates/bad%20name/import", {"value": "x"}),
    ],
)
def test_invalid_names(officer_raw: Raw, method: str, path: str, body: object) -> None:
    err = officer_raw.error(method, path, 400, "BadParameter", body=body)
    assert "invalid name" in err["error"]["message"]


@pytest.mark.parametrize(
    ("method", "path", "raw"),
    [
        ("PUT", "/secrets/json-bad", b"{not json"),
        ("PUT", "/secrets/json-bad", b"[1, 2]"),
        ("PUT", "/secrets/json-bad", b'{"value": 42}'),
        ("POST", "/keys/json-bad/create", b'{"kty": "DSA"}'),
        ("POST", "/keys/json-bad/create", b'{"kty": "RSA", "key_size": 1024}'),
        ("POST", "/keys/json-bad/create", b'{"kty": "EC", "crv": "P-192"}'),
        ("PUT", "/keys/json-bad", b'{"key": {"kty": "RSA", "n": "AQAB", "e": "AQAB"}}'),
        ("PATCH", "/secrets/plain", b'{"attributes": {"exp": "tomorrow"}}'),
        ("POST", "/certificates/json-bad/import", b"\x00\x01"),
    ],
    ids=[
        "syntax",
        "not-object",
        "value-type",
        "kty",
        "rsa-size",
        "curve",
        "import-public-only",
        "exp-type",
        "binary",
    ],
)
def test_malformed_bodies(officer_raw: Raw, method: str, path: str, raw: bytes) -> None:
    kind, name = path.split("/")[1:3]
    before = officer_raw.call("GET", f"/{kind}/{name}")
    officer_raw.error(method, path, 400, "BadParameter", raw=raw)
    after = officer_raw.call("GET", f"/{kind}/{name}")  # nothing written, nothing changed
    assert after.status_code == before.status_code
    if before.status_code == 200:
        assert after.json() == before.json()
    else:
        assert after.status_code == 404


def test_maxresults_out_of_range(officer_raw: Raw) -> None:
    officer_raw.error("GET", "/secrets", 400, "BadParameter", params={"maxresults": "26"})
    officer_raw.error("GET", "/secrets", 400, "BadParameter", params={"maxresults": "0"})


def test_pem_import_without_private_key(officer_raw: Raw) -> None:
    pem = (FIXTURES / "rsa-chain-nokey.pem").read_bytes()
    err = officer_raw.error(
        "POST",
        "/certificates/nokey/import",
        400,
        "BadParameter",
        body={
            "value": base64.b64encode(pem).decode(),
            "policy": {"secret_props": {"contentType": "application/x-pem-file"}},
        },
    )
    assert err["error"]["message"].startswith("Private key is not specified")
    officer_raw.error(
        "POST", "/certificates/nokey/import", 400, "BadParameter", body={"value": pem.decode()}
    )
    officer_raw.error("GET", "/certificates/nokey", 404, "CertificateNotFound")
    officer_raw.error("GET", "/secrets/nokey", 404, "SecretNotFound")


def test_pfx_wrong_password(officer_raw: Raw) -> None:
    pfx = base64.b64encode((FIXTURES / "ec-chain.pfx").read_bytes()).decode()
    officer_raw.error(
        "POST",
        "/certificates/badpw/import",
        400,
        "BadParameter",
        body={"value": pfx, "pwd": "wrong"},
    )
    officer_raw.error(
        "POST", "/certificates/badpw/import", 400, "BadParameter", body={"value": pfx}
    )
    officer_raw.error("GET", "/certificates/badpw", 404, "CertificateNotFound")
    officer_raw.error("GET", "/keys/badpw", 404, "KeyNotFound")


# --- 401 -----------------------------------------------------------------------------------


def _challenge_ok(resp: object) -> None:
    header = resp.headers["WWW-Authenticate"]  # type: ignore[attr-defined]
    assert header == (
        f'Bearer authorization="https://login.microsoftonline.com/{t.TENANT_ID}", '
        'resource="https://vault.azure.net"'
    )


def test_missing_token(emulator: Emulator) -> None:
    raw = Raw(emulator, None)
    for method, path in (
        ("GET", "/secrets/plain"),
        ("PUT", "/secrets/x"),
        ("GET", "/keys"),
        ("POST", "/certificates/x/import"),
    ):
        resp = raw.call(method, path)
        assert resp.status_code == 401
        _challenge_ok(resp)
        assert resp.json()["error"] == {
            "code": "Unauthorized",
            "message": "AKV10000: Request is missing a Bearer or PoP token.",
        }
    resp = raw.call("GET", "/secrets/plain", token="", params={})
    assert resp.status_code == 401


def _signed(key: rsa.RSAPrivateKey, **override: object) -> str:
    now = int(time.time())
    claims = {
        "aud": "https://vault.azure.net",
        "iss": f"https://sts.windows.net/{t.TENANT_ID}/",
        "iat": now,
        "nbf": now,
        "exp": now + 3600,
        "appid": t.SP_OFFICER_ID,
        "oid": "0b000001-0000-4000-8000-000000000001",
        "tid": t.TENANT_ID,
    }
    claims.update(override)
    return jwt.encode(claims, key, algorithm="RS256", headers={"kid": "x"})


def test_bad_tokens(emulator: Emulator) -> None:
    raw = Raw(emulator, None)
    signing = serialization.load_pem_private_key(
        (emulator.state_dir / "entra-signing-key.pem").read_bytes(), None
    )
    assert isinstance(signing, rsa.RSAPrivateKey)
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    cases = {
        "expired": (emulator.token(t.SP_OFFICER_ID, lifetime_seconds=-3600), "expired"),
        "wrongly-signed": (_signed(other), "signature"),
        "not-yet-valid": (_signed(signing, nbf=int(time.time()) + 3600), "not yet valid"),
        "wrong-audience": (
            emulator.token(t.SP_OFFICER_ID, resource="https://management.azure.com"),
            "AKV10022",
        ),
        "other-tenant": (emulator.token(t.SP_OTHER_TENANT_ID), "AKV10032"),
        "garbage": ("not.a.jwt", "malformed"),
    }
    for label, (token, words) in cases.items():
        resp = raw.call("GET", "/secrets/plain", token=token)
        assert resp.status_code == 401, label
        _challenge_ok(resp)
        body = resp.json()
        assert body["error"]["code"] == "Unauthorized", label
        assert words.lower() in body["error"]["message"].lower(), (label, body)
    ok = raw.call("GET", "/secrets/plain", token=_signed(signing))
    assert ok.status_code == 200
