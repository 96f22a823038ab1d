"""Entra ID and managed identity through the real azure-identity credentials (sync and .aio),
and Entra's error rows, raw."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import jwt
import pytest
import requests
from azure.core.exceptions import ClientAuthenticationError, HttpResponseError
from azure.identity import (
    ClientAssertionCredential,
    ClientSecretCredential,
    DefaultAzureCredential,
    ManagedIdentityCredential,
    WorkloadIdentityCredential,
)
from azure.identity.aio import ClientAssertionCredential as AioClientAssertionCredential
from azure.identity.aio import ManagedIdentityCredential as AioManagedIdentityCredential
from azure.keyvault.secrets import SecretClient
from azure.keyvault.secrets.aio import SecretClient as AioSecretClient
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from testbed import emulator as t
from testbed.emulator import Emulator
from testbed.kvhttp import validate

from .conftest import KV_TEST

LOGIN = "https://login.microsoftonline.com"
TOKEN_URL = f"{LOGIN}/{t.TENANT_ID}/oauth2/v2.0/token"
IMDS = "http://169.254.169.254/metadata/identity/oauth2/token"
VAULT_SCOPE = "https://vault.azure.net/.default"


def claims(token: str) -> dict[str, Any]:
    decoded: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
    return decoded


# --- credentials that work ------------------------------------------------------------------


def test_client_secret_token_claims(emulator: Emulator) -> None:
    cred = ClientSecretCredential(t.TENANT_ID, t.SP_READER_ID, t.SP_READER_SECRET)
    tok = cred.get_token(VAULT_SCOPE)
    c = claims(tok.token)
    assert c["aud"] == "https://vault.azure.net"
    assert c["tid"] == t.TENANT_ID and c["appid"] == t.SP_READER_ID
    assert c["iss"] == f"https://sts.windows.net/{t.TENANT_ID}/"
    header = jwt.get_unverified_header(tok.token)
    assert header["alg"] == "RS256" and header["kid"]
    jwks = requests.get(f"{LOGIN}/{t.TENANT_ID}/discovery/v2.0/keys", timeout=10).json()
    key = next(k for k in jwks["keys"] if k["kid"] == header["kid"])
    jwt.decode(
        tok.token, jwt.PyJWK(key).key, algorithms=["RS256"], audience="https://vault.azure.net"
    )
    assert SecretClient(KV_TEST, cred).get_secret("plain").value == "plain-v2"


def test_workload_identity_assertion(emulator: Emulator) -> None:
    cred = ClientAssertionCredential(t.TENANT_ID, t.WI_APP_CLIENT_ID, lambda: t.workload_token())
    assert SecretClient(KV_TEST, cred).get_secret("plain").value == "plain-v2"
    assert claims(cred.get_token(VAULT_SCOPE).token)["appid"] == t.WI_APP_CLIENT_ID


def test_workload_identity_credential_token_file(emulator: Emulator, tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(t.workload_token())
    cred = WorkloadIdentityCredential(
        tenant_id=t.TENANT_ID, client_id=t.WI_APP_CLIENT_ID, token_file_path=str(token_file)
    )
    assert SecretClient(KV_TEST, cred).get_secret("typed").properties.content_type == (
        "application/json"
    )


def test_managed_identity_system_assigned(emulator: Emulator) -> None:
    cred = ManagedIdentityCredential()
    c = claims(cred.get_token(VAULT_SCOPE).token)
    assert c["appid"] == t.MI_SYSTEM_CLIENT_ID and c["oid"] == t.MI_SYSTEM_OBJECT_ID
    assert SecretClient(KV_TEST, cred).get_secret("plain").value == "plain-v2"


@pytest.mark.parametrize(
    "kwargs",
    [
        {"client_id": t.MI_USER_CLIENT_ID},
        {"identity_config": {"object_id": t.MI_USER_OBJECT_ID}},
        {"identity_config": {"resource_id": t.MI_USER_RESOURCE_ID}},
    ],
    ids=["client_id", "object_id", "resource_id"],
)
def test_managed_identity_user_assigned(emulator: Emulator, kwargs: dict[str, Any]) -> None:
    cred = ManagedIdentityCredential(**kwargs)
    c = claims(cred.get_token(VAULT_SCOPE).token)
    assert c["appid"] == t.MI_USER_CLIENT_ID
    assert c["xms_mirid"] == t.MI_USER_RESOURCE_ID
    # only the user-assigned identity has a role on kv-other
    other = SecretClient(t.vault_url("kv-other"), cred)
    assert other.get_secret("other-secret").value == "other-value"


def test_app_service_identity_endpoint(emulator: Emulator, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IDENTITY_ENDPOINT", "http://169.254.169.254/msi/token")
    monkeypatch.setenv("IDENTITY_HEADER", "emulator-identity-header")
    cred = ManagedIdentityCredential(client_id=t.MI_USER_CLIENT_ID)
    assert claims(cred.get_token(VAULT_SCOPE).token)["appid"] == t.MI_USER_CLIENT_ID
    bad = requests.get(
        "http://169.254.169.254/msi/token",
        params={"api-version": "2019-08-01", "resource": "https://vault.azure.net"},
        headers={"X-IDENTITY-HEADER": "wrong"},
        timeout=10,
    )
    assert bad.status_code == 401


async def test_aio_credentials(emulator: Emulator) -> None:
    async with AioManagedIdentityCredential() as mi, AioSecretClient(KV_TEST, mi) as client:
        assert (await client.get_secret("plain")).value == "plain-v2"
    async with (
        AioManagedIdentityCredential(client_id=t.MI_USER_CLIENT_ID) as umi,
        AioSecretClient(t.vault_url("kv-other"), umi) as other,
    ):
        assert (await other.get_secret("other-secret")).value == "other-value"
    wi = AioClientAssertionCredential(t.TENANT_ID, t.WI_APP_CLIENT_ID, lambda: t.workload_token())
    async with wi, AioSecretClient(KV_TEST, wi) as client:
        assert (await client.get_secret("plain")).value == "plain-v2"


def test_custom_cloud(emulator: Emulator) -> None:
    cred = ClientSecretCredential(
        t.TENANT_ID, t.SP_READER_ID, t.SP_READER_SECRET, authority="https://login.custom-cloud.test"
    )
    client = SecretClient(f"https://kv-custom.{t.CUSTOM_VAULT_SUFFIX}/", cred)
    assert client.get_secret("custom-secret").value == "custom-cloud-value"
    challenge = requests.get(
        f"https://kv-custom.{t.CUSTOM_VAULT_SUFFIX}/secrets/custom-secret?api-version=7.4",
        timeout=10,
    )
    assert challenge.status_code == 401
    assert challenge.headers["WWW-Authenticate"] == (
        f'Bearer authorization="https://login.custom-cloud.test/{t.TENANT_ID}", '
        'resource="https://vault.custom-cloud.test"'
    )
    # a public-cloud token has the wrong audience for the custom cloud's vault
    public = emulator.token(t.SP_READER_ID)
    resp = requests.get(
        f"https://kv-custom.{t.CUSTOM_VAULT_SUFFIX}/secrets/custom-secret?api-version=7.4",
        headers={"Authorization": f"Bearer {public}"},
        timeout=10,
    )
    assert resp.status_code == 401 and "AKV10022" in resp.json()["error"]["message"]


def test_discovery_documents(emulator: Emulator) -> None:
    inst = requests.get(
        f"{LOGIN}/common/discovery/instance",
        params={
            "api-version": "1.1",
            "authorization_endpoint": f"{LOGIN}/{t.TENANT_ID}/oauth2/v2.0/authorize",
        },
        timeout=10,
    ).json()
    validate("InstanceDiscovery", inst, "entra")
    assert inst["tenant_discovery_endpoint"] == (
        f"{LOGIN}/{t.TENANT_ID}/v2.0/.well-known/openid-configuration"
    )
    oidc = requests.get(inst["tenant_discovery_endpoint"], timeout=10).json()
    validate("OpenIdConfiguration", oidc, "entra")
    assert oidc["token_endpoint"] == TOKEN_URL
    validate("Jwks", requests.get(oidc["jwks_uri"], timeout=10).json(), "entra")
    by_domain = requests.get(
        f"{LOGIN}/emulator.test/v2.0/.well-known/openid-configuration", timeout=10
    )
    assert by_domain.status_code == 200


# --- Entra ID error rows ---------------------------------------------------------------------


def token_request(form: dict[str, str], url: str = TOKEN_URL) -> requests.Response:
    return requests.post(
        url, data={"grant_type": "client_credentials", "scope": VAULT_SCOPE, **form}, timeout=10
    )


def entra_error(resp: requests.Response, status: int, code: int, error: str) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    body: dict[str, Any] = resp.json()
    validate("EntraError", body, "entra")
    assert body["error"] == error
    assert body["error_codes"] == [code]
    assert body["error_description"].startswith(f"AADSTS{code}: ")
    return body


def other_issuer_key() -> bytes:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


@pytest.mark.parametrize(
    ("form", "status", "code", "error"),
    [
        ({"client_id": t.SP_READER_ID, "client_secret": "wrong"}, 401, 7000215, "invalid_client"),
        (
            {"client_id": "99999999-0000-4000-8000-000000000000", "client_secret": "x"},
            400,
            700016,
            "unauthorized_client",
        ),
        # an identity of another tenant is unknown in this one
        (
            {"client_id": t.SP_OTHER_TENANT_ID, "client_secret": t.SP_OTHER_TENANT_SECRET},
            400,
            700016,
            "unauthorized_client",
        ),
        (
            {
                "client_id": t.SP_READER_ID,
                "client_secret": t.SP_READER_SECRET,
                "scope": "https://vault.azure.net/user_impersonation",
            },
            400,
            1002012,
            "invalid_scope",
        ),
        ({"client_id": t.SP_READER_ID}, 401, 7000218, "invalid_client"),
    ],
    ids=[
        "wrong-secret",
        "unknown-client",
        "other-tenant-client",
        "scope-not-default",
        "no-credential",
    ],
)
def test_token_errors(
    emulator: Emulator, form: dict[str, str], status: int, code: int, error: str
) -> None:
    entra_error(token_request(form), status, code, error)


def test_unknown_tenant(emulator: Emulator) -> None:
    tenant = "00000000-dead-4bad-8bad-000000000000"
    entra_error(
        token_request(
            {"client_id": t.SP_READER_ID, "client_secret": t.SP_READER_SECRET},
            url=f"{LOGIN}/{tenant}/oauth2/v2.0/token",
        ),
        400,
        90002,
        "invalid_tenant",
    )
    resp = requests.get(f"{LOGIN}/{tenant}/v2.0/.well-known/openid-configuration", timeout=10)
    entra_error(resp, 400, 90002, "invalid_tenant")
    # MSAL fails at OIDC discovery, as it does against Entra ID
    with pytest.raises(ClientAuthenticationError, match="Unable to get authority configuration"):
        ClientSecretCredential(tenant, t.SP_READER_ID, t.SP_READER_SECRET).get_token(VAULT_SCOPE)


def test_wrong_secret_through_sdk(emulator: Emulator) -> None:
    with pytest.raises(ClientAuthenticationError, match="AADSTS7000215"):
        ClientSecretCredential(t.TENANT_ID, t.SP_READER_ID, "nope").get_token(VAULT_SCOPE)


@pytest.mark.parametrize(
    ("assertion_kwargs", "status", "code", "error"),
    [
        ({"subject": "system:serviceaccount:default:someone-else"}, 401, 70021, "invalid_client"),
        ({"issuer": "https://other-issuer.emulator.test"}, 401, 70021, "invalid_client"),
        ({"audience": "api://SomethingElse"}, 401, 70021, "invalid_client"),
        ({"lifetime": -600}, 400, 700024, "invalid_client"),
        ({"key": "other"}, 401, 50013, "invalid_client"),
    ],
    ids=["subject-differs", "issuer-differs", "audience-differs", "expired", "wrongly-signed"],
)
def test_workload_identity_errors(
    emulator: Emulator, assertion_kwargs: dict[str, Any], status: int, code: int, error: str
) -> None:
    kw = dict(assertion_kwargs)
    key = other_issuer_key() if kw.pop("key", None) == "other" else None
    assertion = t.workload_token(key_pem=key, **kw)
    body = entra_error(
        token_request(
            {
                "client_id": t.WI_APP_CLIENT_ID,
                "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                "client_assertion": assertion,
            }
        ),
        status,
        code,
        error,
    )
    if code == 70021:
        assert "No matching federated identity record found" in body["error_description"]


def test_workload_identity_error_through_sdk(emulator: Emulator) -> None:
    cred = ClientAssertionCredential(
        t.TENANT_ID,
        t.WI_APP_CLIENT_ID,
        lambda: t.workload_token(subject="system:serviceaccount:x:y"),
    )
    with pytest.raises(ClientAuthenticationError, match="AADSTS70021"):
        cred.get_token(VAULT_SCOPE)


def test_issuer_added_at_run_time(emulator: Emulator) -> None:
    """Other suites register their own issuer (e.g. a kube-apiserver's JWKS) and app."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    jwk = jwt.PyJWK.from_json(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    jwk_dict = {**jwk._jwk_data, "kid": "k2", "alg": "RS256", "use": "sig"}
    emulator.seed(
        {
            "issuers": [{"issuer": "https://kube.emulator.test", "jwks": {"keys": [jwk_dict]}}],
            "identities": [
                {
                    "name": "wi-runtime",
                    "type": "application",
                    "clientId": "0a0000ff-0000-4000-8000-0000000000ff",
                    "federatedCredentials": [
                        {
                            "issuer": "https://kube.emulator.test",
                            "subject": "system:serviceaccount:ns1:sa1",
                        }
                    ],
                }
            ],
            "vaults": [
                {
                    "name": "kv-test",
                    "roleAssignments": [
                        {
                            "identity": "wi-runtime",
                            "role": "Key Vault Secrets User",
                            "scope": "/secrets/plain",
                        }
                    ],
                }
            ],
        }
    )
    cred = ClientAssertionCredential(
        t.TENANT_ID,
        "0a0000ff-0000-4000-8000-0000000000ff",
        lambda: t.workload_token(
            issuer="https://kube.emulator.test",
            subject="system:serviceaccount:ns1:sa1",
            key_pem=pem,
            kid="k2",
        ),
    )
    client = SecretClient(KV_TEST, cred)
    assert client.get_secret("plain").value == "plain-v2"
    # the assignment is scoped to that one secret
    with pytest.raises(HttpResponseError) as info:
        client.get_secret("typed")
    assert info.value.status_code == 403
    assert info.value.response is not None
    assert info.value.response.json()["error"]["innerError"]["code"] == "ForbiddenByRbac"
    # ... and not to another secret whose name merely starts with it
    emulator.set_secret("kv-test", "plain-but-other", "not yours")
    with pytest.raises(HttpResponseError) as info:
        client.get_secret("plain-but-other")
    assert info.value.status_code == 403


# --- IMDS error rows ---------------------------------------------------------------------


def test_imds_errors(emulator: Emulator) -> None:
    params = {"api-version": "2018-02-01", "resource": "https://vault.azure.net"}
    no_header = requests.get(IMDS, params=params, timeout=10)
    assert no_header.status_code == 400
    validate("ImdsError", no_header.json(), "entra")
    assert no_header.json()["error_description"] == "Required metadata header not specified"
    unknown = requests.get(
        IMDS, params={**params, "client_id": "nobody"}, headers={"Metadata": "true"}, timeout=10
    )
    assert (
        unknown.status_code == 400 and unknown.json()["error_description"] == "Identity not found"
    )
    ok = requests.get(IMDS, params=params, headers={"Metadata": "true"}, timeout=10)
    assert ok.status_code == 200
    validate("ImdsToken", ok.json(), "entra")
    no_resource = requests.get(
        IMDS, params={"api-version": "2018-02-01"}, headers={"Metadata": "true"}, timeout=10
    )
    assert no_resource.status_code == 400


def _emulator_signed_assertion(emulator: Emulator, issuer: str, subject: str) -> tuple[str, str]:
    """An assertion signed by the emulator's own Entra key, so that the emulator's JWKS
    endpoint can stand in for a remote issuer's (kube-apiserver's /openid/v1/jwks)."""
    key = (emulator.state_dir / "entra-signing-key.pem").read_bytes()
    jwks = requests.get(f"{LOGIN}/{t.TENANT_ID}/discovery/v2.0/keys", timeout=10).json()
    kid = jwks["keys"][0]["kid"]
    return t.workload_token(issuer=issuer, subject=subject, key_pem=key, kid=kid), kid


@pytest.mark.parametrize("mode", ["jwksUri", "discovery"])
def test_issuer_keys_fetched(emulator: Emulator, mode: str) -> None:
    client_id = str(uuid.uuid4())
    if mode == "jwksUri":
        issuer = f"https://fetched-{uuid.uuid4().hex[:6]}.emulator.test"
        spec = {
            "issuer": issuer,
            "jwksUri": f"{LOGIN}/{t.TENANT_ID}/discovery/v2.0/keys",
            "caFile": str(emulator.ca_path),
        }
    else:
        # OIDC discovery: <issuer>/.well-known/openid-configuration -> jwks_uri
        issuer = f"{LOGIN}/{t.TENANT_ID}/v2.0"
        spec = {"issuer": issuer}
    subject = f"system:serviceaccount:fetch:{mode.lower()}"
    emulator.seed(
        {
            "issuers": [spec],
            "identities": [
                {
                    "name": f"wi-{client_id[:8]}",
                    "type": "application",
                    "clientId": client_id,
                    "federatedCredentials": [{"issuer": issuer, "subject": subject}],
                }
            ],
            "vaults": [
                {
                    "name": "kv-test",
                    "roleAssignments": [{"identity": client_id, "role": "Key Vault Secrets User"}],
                }
            ],
        }
    )
    assertion, _ = _emulator_signed_assertion(emulator, issuer, subject)
    cred = ClientAssertionCredential(t.TENANT_ID, client_id, lambda: assertion)
    assert SecretClient(KV_TEST, cred).get_secret("plain").value == "plain-v2"


def test_issuer_keys_unreachable(emulator: Emulator) -> None:
    client_id = str(uuid.uuid4())
    issuer = "https://unreachable.emulator.test"
    emulator.seed(
        {
            "issuers": [
                {"issuer": issuer, "jwksUri": "https://kv-denied.vault.azure.net/no-jwks-here"}
            ],
            "identities": [
                {
                    "name": f"wi-{client_id[:8]}",
                    "type": "application",
                    "clientId": client_id,
                    "federatedCredentials": [{"issuer": issuer, "subject": "s"}],
                }
            ],
        }
    )
    assertion, _ = _emulator_signed_assertion(emulator, issuer, "s")
    entra_error(
        token_request(
            {
                "client_id": client_id,
                "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                "client_assertion": assertion,
            }
        ),
        401,
        50166,
        "invalid_client",
    )


def test_v1_endpoint_and_basic_auth(emulator: Emulator) -> None:
    v1 = requests.post(
        f"{LOGIN}/{t.TENANT_ID}/oauth2/token",
        data={
            "grant_type": "client_credentials",
            "client_id": t.SP_READER_ID,
            "client_secret": t.SP_READER_SECRET,
            "resource": "https://vault.azure.net",
        },
        timeout=10,
    )
    assert v1.status_code == 200
    body = v1.json()
    validate("TokenResponse", body, "entra")
    assert body["resource"] == "https://vault.azure.net" and body["expires_on"].isdigit()
    basic = requests.post(
        TOKEN_URL,
        data={"grant_type": "client_credentials", "scope": VAULT_SCOPE},
        auth=(t.SP_READER_ID, t.SP_READER_SECRET),
        timeout=10,
    )
    assert basic.status_code == 200
    validate("TokenResponse", basic.json(), "entra")
    assert claims(basic.json()["access_token"])["appid"] == t.SP_READER_ID
    wrong_grant = requests.post(TOKEN_URL, data={"grant_type": "password"}, timeout=10)
    entra_error(wrong_grant, 400, 70003, "unsupported_grant_type")


def test_default_azure_credential(
    emulator: Emulator, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The chain's IMDS probe (no Metadata header, answered 400) and the workload-identity
    environment variables both work as against Azure."""
    for var in (
        "AZURE_CLIENT_ID",
        "AZURE_TENANT_ID",
        "AZURE_CLIENT_SECRET",
        "AZURE_FEDERATED_TOKEN_FILE",
        "IDENTITY_ENDPOINT",
        "IDENTITY_HEADER",
        "MSI_ENDPOINT",
        "AZURE_AUTHORITY_HOST",
    ):
        monkeypatch.delenv(var, raising=False)
    exclude = {
        "exclude_cli_credential": True,
        "exclude_powershell_credential": True,
        "exclude_developer_cli_credential": True,
        "exclude_shared_token_cache_credential": True,
        "exclude_visual_studio_code_credential": True,
    }
    mi = DefaultAzureCredential(**exclude)
    assert claims(mi.get_token(VAULT_SCOPE).token)["appid"] == t.MI_SYSTEM_CLIENT_ID
    token_file = tmp_path / "sa-token"
    token_file.write_text(t.workload_token())
    monkeypatch.setenv("AZURE_CLIENT_ID", t.WI_APP_CLIENT_ID)
    monkeypatch.setenv("AZURE_TENANT_ID", t.TENANT_ID)
    monkeypatch.setenv("AZURE_FEDERATED_TOKEN_FILE", str(token_file))
    wi = DefaultAzureCredential(**exclude)
    assert SecretClient(KV_TEST, wi).get_secret("plain").value == "plain-v2"
    assert claims(wi.get_token(VAULT_SCOPE).token)["appid"] == t.WI_APP_CLIENT_ID


def test_issuer_key_rotation_refetches(emulator: Emulator) -> None:
    """An issuer serving its keys over HTTPS rotates them (as a new kube-apiserver on the same
    issuer URL does): the next assertion, signed by the new key, is accepted at once."""
    import http.server
    import ssl
    import threading

    served: dict[str, bytes] = {}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = served["jwks"]
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(emulator.state_dir / "server.pem", emulator.state_dir / "server-key.pem")
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:

        def keypair(kid: str) -> tuple[bytes, bytes]:
            key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            pem = key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
            jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
            return pem, json.dumps({"keys": [{**jwk, "kid": kid, "alg": "RS256"}]}).encode()

        issuer = f"https://rotating-{uuid.uuid4().hex[:6]}.emulator.test"
        client_id = str(uuid.uuid4())
        emulator.seed(
            {
                "issuers": [
                    {
                        "issuer": issuer,
                        "caFile": str(emulator.ca_path),
                        "jwksUri": f"https://127.0.0.1:{server.server_address[1]}/jwks",
                    }
                ],
                "identities": [
                    {
                        "name": f"wi-{client_id[:8]}",
                        "clientId": client_id,
                        "federatedCredentials": [{"issuer": issuer, "subject": "sa"}],
                    }
                ],
            }
        )
        form = {
            "client_id": client_id,
            "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        }
        old_pem, served["jwks"] = keypair("old")
        first = t.workload_token(issuer=issuer, subject="sa", key_pem=old_pem, kid="old")
        assert token_request({**form, "client_assertion": first}).status_code == 200
        new_pem, served["jwks"] = keypair("new")
        second = t.workload_token(issuer=issuer, subject="sa", key_pem=new_pem, kid="new")
        assert token_request({**form, "client_assertion": second}).status_code == 200
        # the retired key no longer verifies
        again = t.workload_token(issuer=issuer, subject="sa", key_pem=old_pem, kid="old")
        entra_error(
            token_request({**form, "client_assertion": again}), 401, 50013, "invalid_client"
        )
    finally:
        server.shutdown()
