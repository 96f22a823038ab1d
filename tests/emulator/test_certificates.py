"""Certificates through the real SDK (sync and .aio): import PEM (chain kept) and PFX (with
and without a password), create self-signed (RSA, EC; PEM, PFX), get, versions, policy, and
the managed key and secret each version creates."""

from __future__ import annotations

import base64
import hashlib
import uuid
from pathlib import Path

import pytest
from azure.core.exceptions import ResourceNotFoundError
from azure.identity.aio import ClientSecretCredential as AioClientSecretCredential
from azure.keyvault.certificates import (
    CertificateClient,
    CertificateContentType,
    CertificatePolicy,
    KeyCurveName,
    KeyType,
)
from azure.keyvault.certificates.aio import CertificateClient as AioCertificateClient
from azure.keyvault.keys import KeyClient
from azure.keyvault.secrets import SecretClient
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs12

from testbed import emulator as t
from testbed.emulator import Emulator
from testbed.kvhttp import Raw

from .conftest import KV_TEST

FIXTURES = Path(__file__).parent / "fixtures"
PEM_CT = "application/x-pem-file"
PFX_CT = "application/x-pkcs12"


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def pem_certs(text: str) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(text.encode())


def test_import_pem_keeps_chain(
    certs_officer: CertificateClient, secrets_officer: SecretClient, keys_officer: KeyClient
) -> None:
    name = unique("pem")
    bundle = (FIXTURES / "rsa-chain.pem").read_bytes()
    cert = certs_officer.import_certificate(
        name, bundle, policy=CertificatePolicy(content_type=CertificateContentType.pem)
    )
    leaf = x509.load_der_x509_certificate(bytes(cert.cer or b""))
    assert leaf.subject.rfc4514_string() == "CN=leaf.emulator.test"
    assert cert.properties.x509_thumbprint == hashlib.sha1(bytes(cert.cer or b"")).digest()
    assert cert.key_id == f"https://kv-test.vault.azure.net/keys/{name}/{cert.properties.version}"
    assert (
        cert.secret_id
        == f"https://kv-test.vault.azure.net/secrets/{name}/{cert.properties.version}"
    )
    secret = secrets_officer.get_secret(name)
    assert secret.properties.content_type == PEM_CT
    assert secret.properties.managed is True
    assert secret.properties.key_id == cert.key_id
    assert secret.value is not None and secret.value.startswith("-----BEGIN PRIVATE KEY-----")
    chain = pem_certs(secret.value)
    assert [c.subject.rfc4514_string() for c in chain] == [
        "CN=leaf.emulator.test",
        "CN=Emulator Test Intermediate",
        "CN=Emulator Test Root",
    ]
    key = keys_officer.get_key(name)
    assert key.properties.managed is True and key.key_type == KeyType.rsa
    assert key.properties.version == cert.properties.version
    policy = certs_officer.get_certificate_policy(name)
    assert policy.content_type == CertificateContentType.pem
    assert policy.issuer_name == "Unknown"


@pytest.mark.parametrize("password", ["test-password", None])
def test_import_pfx(
    certs_officer: CertificateClient, secrets_officer: SecretClient, password: str | None
) -> None:
    name = unique("pfx")
    key, leaf, extra = pkcs12.load_key_and_certificates(
        (FIXTURES / "ec-chain.pfx").read_bytes(), b"test-password"
    )
    assert key is not None and leaf is not None
    if password is None:
        data = pkcs12.serialize_key_and_certificates(
            None,
            key,
            leaf,
            extra,
            serialization.NoEncryption(),  # type: ignore[arg-type]
        )
    else:
        data = (FIXTURES / "ec-chain.pfx").read_bytes()
    cert = certs_officer.import_certificate(name, data, password=password)
    assert x509.load_der_x509_certificate(bytes(cert.cer or b"")) == leaf
    secret = secrets_officer.get_secret(name)
    assert secret.properties.content_type == PFX_CT
    k2, c2, more = pkcs12.load_key_and_certificates(base64.b64decode(secret.value or ""), None)
    assert c2 == leaf and isinstance(k2, ec.EllipticCurvePrivateKey)
    assert len(more) == 2


@pytest.mark.parametrize(
    ("key_type", "content_type"),
    [(KeyType.rsa, CertificateContentType.pkcs12), (KeyType.ec, CertificateContentType.pem)],
)
def test_create_self_signed(
    certs_officer: CertificateClient,
    secrets_officer: SecretClient,
    key_type: KeyType,
    content_type: CertificateContentType,
) -> None:
    name = unique("gen")
    policy = CertificatePolicy(
        issuer_name="Self",
        subject="CN=made.emulator.test",
        san_dns_names=["made.emulator.test"],
        key_type=key_type,
        key_size=2048 if key_type == KeyType.rsa else None,
        key_curve_name=KeyCurveName.p_384 if key_type == KeyType.ec else None,
        content_type=content_type,
        validity_in_months=6,
    )
    poller = certs_officer.begin_create_certificate(name, policy)
    cert = poller.result()
    assert cert.name == name and cert.cer
    leaf = x509.load_der_x509_certificate(bytes(cert.cer))
    assert leaf.subject.rfc4514_string() == "CN=made.emulator.test"
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["made.emulator.test"]
    secret = secrets_officer.get_secret(name)
    assert secret.properties.content_type == content_type.value
    if content_type == CertificateContentType.pem:
        priv = serialization.load_pem_private_key((secret.value or "").encode(), None)
        assert isinstance(priv, ec.EllipticCurvePrivateKey) and priv.curve.name == "secp384r1"
    else:
        priv2, c, _ = pkcs12.load_key_and_certificates(base64.b64decode(secret.value or ""), None)
        assert isinstance(priv2, rsa.RSAPrivateKey) and c == leaf
    op = certs_officer.get_certificate_operation(name)
    assert op.status == "completed"
    assert certs_officer.get_certificate_policy(name).issuer_name == "Self"
    # a second version from the stored policy
    second = certs_officer.begin_create_certificate(name, policy).result()
    assert second.properties.version != cert.properties.version
    versions = {p.version for p in certs_officer.list_properties_of_certificate_versions(name)}
    assert versions == {cert.properties.version, second.properties.version}
    old = certs_officer.get_certificate_version(name, cert.properties.version or "")
    assert old.cer == cert.cer


def test_update_delete_recover(
    certs_officer: CertificateClient, secrets_officer: SecretClient
) -> None:
    name = unique("upd")
    certs_officer.import_certificate(
        name,
        (FIXTURES / "rsa-chain.pem").read_bytes(),
        policy=CertificatePolicy(content_type=CertificateContentType.pem),
    )
    props = certs_officer.update_certificate_properties(name, tags={"t": "1"})
    assert props.properties.tags == {"t": "1"}
    assert name in {c.name for c in certs_officer.list_properties_of_certificates()}
    deleted = certs_officer.begin_delete_certificate(name).result()
    assert deleted.recovery_id
    with pytest.raises(ResourceNotFoundError):
        secrets_officer.get_secret(name)
    certs_officer.begin_recover_deleted_certificate(name).result()
    assert secrets_officer.get_secret(name).properties.managed is True
    certs_officer.begin_delete_certificate(name).result()
    certs_officer.purge_deleted_certificate(name)


def test_seeded(certs_officer: CertificateClient, secrets_officer: SecretClient) -> None:
    for name, ct in (("cert-pem", PEM_CT), ("cert-pfx", PFX_CT), ("cert-gen", PFX_CT)):
        cert = certs_officer.get_certificate(name)
        assert cert.cer
        assert secrets_officer.get_secret(name).properties.content_type == ct


def test_raw_shapes(emulator: Emulator) -> None:
    raw = Raw(emulator, t.SP_OFFICER_ID)
    name = unique("rawcert")
    pem = (FIXTURES / "rsa-chain.pem").read_text()
    body = raw.ok(
        "POST",
        f"/certificates/{name}/import",
        "CertificateBundle",
        {"value": pem, "policy": {"secret_props": {"contentType": PEM_CT}}},
    )
    version = body["id"].rsplit("/", 1)[1]
    raw.ok("GET", f"/certificates/{name}", "CertificateBundle")
    raw.ok("GET", f"/certificates/{name}/{version}", "CertificateBundle")
    raw.ok("GET", f"/certificates/{name}/policy", "CertificatePolicy")
    raw.ok("GET", f"/certificates/{name}/versions", "CertificateListResult")
    raw.ok("GET", "/certificates", "CertificateListResult")
    raw.ok("PATCH", f"/certificates/{name}/{version}", "CertificateBundle", {"tags": {"a": "b"}})
    gen = unique("rawgen")
    op = raw.ok(
        "POST",
        f"/certificates/{gen}/create",
        "CertificateOperation",
        {
            "policy": {
                "key_props": {"kty": "EC", "crv": "P-256"},
                "x509_props": {"subject": "CN=x"},
                "issuer": {"name": "Self"},
            }
        },
        status=202,
    )
    assert op["status"] == "inProgress" and op["csr"]
    done = raw.ok("GET", f"/certificates/{gen}/pending", "CertificateOperation")
    assert done["status"] == "completed" and done["target"].endswith(f"/certificates/{gen}")
    raw.ok("DELETE", f"/certificates/{name}", "DeletedCertificateBundle")
    raw.ok("GET", f"/deletedcertificates/{name}", "DeletedCertificateBundle")
    raw.ok("GET", "/deletedcertificates", "DeletedCertificateListResult")
    raw.ok("POST", f"/deletedcertificates/{name}/recover", "CertificateBundle")


async def test_aio_round_trip(emulator: Emulator) -> None:
    cred = AioClientSecretCredential(t.TENANT_ID, t.SP_OFFICER_ID, t.SP_OFFICER_SECRET)
    async with cred, AioCertificateClient(KV_TEST, cred) as client:
        name = unique("aiocert")
        policy = CertificatePolicy(
            issuer_name="Self",
            subject="CN=aio",
            key_type=KeyType.ec,
            key_curve_name=KeyCurveName.p_256,
        )
        cert = await client.create_certificate(name, policy)
        assert cert.cer
        got = await client.get_certificate(name)
        assert got.properties.version == cert.properties.version
        imported = await client.import_certificate(
            unique("aiopfx"), (FIXTURES / "ec-chain.pfx").read_bytes(), password="test-password"
        )
        assert imported.cer
        assert name in [c.name async for c in client.list_properties_of_certificates()]
        versions = [v async for v in client.list_properties_of_certificate_versions(name)]
        assert len(versions) == 1


def test_pfx_secret_is_exported_as_key_vault_does(secrets_officer: SecretClient) -> None:
    """Empty password, SHA-1 MAC, 3DES-shrouded key: what older PKCS#12 readers (the upstream
    Go provider's) can read."""
    data = base64.b64decode(secrets_officer.get_secret("cert-gen").value or "")
    sha1_oid = bytes.fromhex("06052b0e03021a")
    assert data.rfind(sha1_oid) > len(data) - 60  # in MacData, at the end
    assert bytes.fromhex("060b2a864886f70d010c0a0102") in data  # pkcs8ShroudedKeyBag
    assert bytes.fromhex("060a2a864886f70d010c0103") in data  # pbeWithSHAAnd3-KeyTripleDES-CBC
    for password in (None, b""):
        key, cert, _ = pkcs12.load_key_and_certificates(data, password)
        assert key is not None and cert is not None
