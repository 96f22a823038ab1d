"""Keys through the real SDK (sync and .aio): create, import, get (public only), versions,
update, delete, and the cryptographic operations."""

from __future__ import annotations

import hashlib
import uuid

import pytest
from azure.identity.aio import ClientSecretCredential as AioClientSecretCredential
from azure.keyvault.keys import JsonWebKey, KeyClient, KeyCurveName, KeyType
from azure.keyvault.keys.aio import KeyClient as AioKeyClient
from azure.keyvault.keys.crypto import (
    CryptographyClient,
    EncryptionAlgorithm,
    KeyWrapAlgorithm,
    SignatureAlgorithm,
)
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from testbed import emulator as t
from testbed.emulator import Emulator
from testbed.kvhttp import Raw

from .conftest import KV_TEST


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.mark.parametrize("size", [2048, 3072, 4096])
def test_create_rsa(keys_officer: KeyClient, size: int) -> None:
    name = unique("rsa")
    key = keys_officer.create_rsa_key(name, size=size)
    assert key.key_type == KeyType.rsa
    jwk = key.key
    assert jwk.n is not None and len(jwk.n) == size // 8
    assert jwk.e == b"\x01\x00\x01"
    assert jwk.d is None and jwk.p is None  # public half only
    assert set(key.key_operations) == {
        "encrypt",
        "decrypt",
        "sign",
        "verify",
        "wrapKey",
        "unwrapKey",
    }
    assert key.id == f"https://kv-test.vault.azure.net/keys/{name}/{key.properties.version}"


@pytest.mark.parametrize(
    ("curve", "size"),
    [(KeyCurveName.p_256, 32), (KeyCurveName.p_384, 48), (KeyCurveName.p_521, 66)],
)
def test_create_ec(keys_officer: KeyClient, curve: KeyCurveName, size: int) -> None:
    key = keys_officer.create_ec_key(unique("ec"), curve=curve)
    assert key.key_type == KeyType.ec and key.key.crv == curve
    assert key.key.x is not None and len(key.key.x) == size
    assert key.key.d is None


def test_import_versions_update_delete(keys_officer: KeyClient) -> None:
    name = unique("imp")
    priv = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    nums = priv.private_numbers()

    def b(i: int) -> bytes:
        return i.to_bytes((i.bit_length() + 7) // 8, "big")

    jwk = JsonWebKey(
        kty=KeyType.rsa,
        n=b(nums.public_numbers.n),
        e=b(nums.public_numbers.e),
        d=b(nums.d),
        p=b(nums.p),
        q=b(nums.q),
        dp=b(nums.dmp1),
        dq=b(nums.dmq1),
        qi=b(nums.iqmp),
        key_ops=["sign", "verify"],
    )
    imported = keys_officer.import_key(name, jwk)
    assert imported.key.n == b(nums.public_numbers.n)
    assert imported.key_operations == ["sign", "verify"]
    ec_priv = ec.generate_private_key(ec.SECP256R1())
    en = ec_priv.private_numbers()
    second = keys_officer.import_key(
        name,
        JsonWebKey(
            kty=KeyType.ec,
            crv=KeyCurveName.p_256,
            x=en.public_numbers.x.to_bytes(32, "big"),
            y=en.public_numbers.y.to_bytes(32, "big"),
            d=en.private_value.to_bytes(32, "big"),
        ),
    )
    assert keys_officer.get_key(name).properties.version == second.properties.version
    assert keys_officer.get_key(name, imported.properties.version).key_type == KeyType.rsa
    versions = [p.version for p in keys_officer.list_properties_of_key_versions(name)]
    assert set(versions) == {imported.properties.version, second.properties.version}
    updated = keys_officer.update_key_properties(name, enabled=False, tags={"x": "y"})
    assert updated.properties.enabled is False and updated.properties.tags == {"x": "y"}
    assert name in {p.name for p in keys_officer.list_properties_of_keys()}
    deleted = keys_officer.begin_delete_key(name).result()
    assert deleted.recovery_id and deleted.name == name
    assert keys_officer.get_deleted_key(name).name == name
    keys_officer.purge_deleted_key(name)


def test_crypto_operations(keys_officer: KeyClient, officer: object) -> None:
    rsa_key = keys_officer.create_rsa_key(unique("crypto"), size=2048)
    crypto = CryptographyClient(rsa_key, officer)  # type: ignore[arg-type]
    digest = hashlib.sha256(b"hello").digest()
    for alg in (SignatureAlgorithm.rs256, SignatureAlgorithm.ps256):
        sig = crypto.sign(alg, digest)
        assert crypto.verify(alg, digest, sig.signature).is_valid
        assert not crypto.verify(alg, hashlib.sha256(b"other").digest(), sig.signature).is_valid
    enc = crypto.encrypt(EncryptionAlgorithm.rsa_oaep_256, b"plaintext")
    assert (
        crypto.decrypt(EncryptionAlgorithm.rsa_oaep_256, enc.ciphertext).plaintext == b"plaintext"
    )
    wrapped = crypto.wrap_key(KeyWrapAlgorithm.rsa_oaep, b"k" * 32)
    assert crypto.unwrap_key(KeyWrapAlgorithm.rsa_oaep, wrapped.encrypted_key).key == b"k" * 32
    ec_key = keys_officer.create_ec_key(unique("ecsign"), curve=KeyCurveName.p_256)
    ec_crypto = CryptographyClient(ec_key.id, officer)  # type: ignore[arg-type]
    sig = ec_crypto.sign(SignatureAlgorithm.es256, digest)
    assert len(sig.signature) == 64
    assert ec_crypto.verify(SignatureAlgorithm.es256, digest, sig.signature).is_valid


def test_raw_shapes(emulator: Emulator) -> None:
    raw = Raw(emulator, t.SP_OFFICER_ID)
    name = unique("rawkey")
    created = raw.ok("POST", f"/keys/{name}/create", "KeyBundle", {"kty": "EC", "crv": "P-384"})
    version = created["key"]["kid"].rsplit("/", 1)[1]
    assert created["attributes"]["exportable"] is False
    raw.ok("GET", f"/keys/{name}", "KeyBundle")
    raw.ok("GET", f"/keys/{name}/{version}", "KeyBundle")
    raw.ok("GET", "/keys/rsa-key", "KeyBundle")
    raw.ok("GET", "/keys/ec-key", "KeyBundle")
    raw.ok("GET", "/keys/cert-pem", "KeyBundle")
    raw.ok("GET", f"/keys/{name}/versions", "KeyListResult")
    raw.ok("GET", "/keys", "KeyListResult", params={"maxresults": "3"})
    raw.ok("PATCH", f"/keys/{name}/{version}", "KeyBundle", {"tags": {"a": "b"}})
    digest = "n4bQgYhMfWWaL-qgxVrQFaO_TxsrC4Is0V1sFbDwCgg"
    raw.ok(
        "POST",
        f"/keys/{name}/{version}/sign",
        "KeyOperationResult",
        {"alg": "ES384", "value": digest + "A" * 21},
    )
    raw.ok("DELETE", f"/keys/{name}", "DeletedKeyBundle")
    raw.ok("GET", f"/deletedkeys/{name}", "DeletedKeyBundle")
    raw.ok("GET", "/deletedkeys", "DeletedKeyListResult")
    raw.ok("POST", f"/deletedkeys/{name}/recover", "KeyBundle")


async def test_aio_round_trip(emulator: Emulator) -> None:
    cred = AioClientSecretCredential(t.TENANT_ID, t.SP_OFFICER_ID, t.SP_OFFICER_SECRET)
    async with cred, AioKeyClient(KV_TEST, cred) as client:
        name = unique("aiokey")
        created = await client.create_ec_key(name, curve=KeyCurveName.p_256)
        got = await client.get_key(name)
        assert got.key.x == created.key.x
        await client.create_rsa_key(name, size=2048)
        versions = [p async for p in client.list_properties_of_key_versions(name)]
        assert len(versions) == 2
        assert name in [p.name async for p in client.list_properties_of_keys()]
        deleted = await client.delete_key(name)
        assert deleted.name == name


def test_disabled_key_refuses_private_operations_only(emulator: Emulator) -> None:
    raw = Raw(emulator, t.SP_OFFICER_ID)
    name = unique("dis")
    kid = raw.ok("POST", f"/keys/{name}/create", "KeyBundle", {"kty": "RSA"})["key"]["kid"]
    version = kid.rsplit("/", 1)[1]
    raw.ok("PATCH", f"/keys/{name}/{version}", "KeyBundle", {"attributes": {"enabled": False}})
    assert raw.call("GET", f"/keys/{name}").status_code == 200
    digest = "n4bQgYhMfWWaL-qgxVrQFaO_TxsrC4Is0V1sFbDwCgg"
    raw.error(
        "POST",
        f"/keys/{name}/{version}/sign",
        403,
        "Forbidden",
        {"alg": "RS256", "value": digest},
        inner="KeyDisabled",
    )
    enc = raw.ok(
        "POST",
        f"/keys/{name}/{version}/encrypt",
        "KeyOperationResult",
        {"alg": "RSA-OAEP-256", "value": "aGVsbG8"},
    )
    raw.error(
        "POST",
        f"/keys/{name}/{version}/decrypt",
        403,
        "Forbidden",
        {"alg": "RSA-OAEP-256", "value": enc["value"]},
        inner="KeyDisabled",
    )
