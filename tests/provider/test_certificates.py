"""Conversions, byte-for-byte: PFX → key + ordered chain, PEM split, JWK → public PEM, encodings."""

from __future__ import annotations

import base64

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from hypothesis import given, settings
from hypothesis import strategies as st

from provider_azure import certificates
from provider_azure.certificates import ConversionError
from provider_azure.content import content_bytes
from provider_azure.objects import ObjectEncoding, ObjectType

from .pki import make_chain


@pytest.fixture(scope="module", params=["rsa", "ec"])
def chain(request: pytest.FixtureRequest):  # type: ignore[no-untyped-def]
    return make_chain(request.param)


def test_pfx_to_pem_orders_leaf_intermediate_root(chain) -> None:  # type: ignore[no-untyped-def]
    for cas in ([chain.intermediate, chain.root], [chain.root, chain.intermediate]):
        out = certificates.pkcs12_to_pem(chain.pfx_b64(cas=cas), construct_chain=True)
        assert out.encode() == chain.key_pkcs8_pem + chain.ordered_pem


def test_pfx_without_chain_construction_keeps_archive_order(chain) -> None:  # type: ignore[no-untyped-def]
    out = certificates.pkcs12_to_pem(
        chain.pfx_b64(cas=[chain.root, chain.intermediate]), construct_chain=False
    )
    assert out.encode() == chain.key_pkcs8_pem + chain.pem(chain.leaf) + chain.pem(
        chain.root
    ) + chain.pem(chain.intermediate)


def test_incomplete_chain_keeps_order(chain) -> None:  # type: ignore[no-untyped-def]
    out = certificates.pkcs12_to_pem(chain.pfx_b64(cas=[chain.root]), construct_chain=True)
    assert out.encode() == chain.key_pkcs8_pem + chain.pem(chain.leaf) + chain.pem(chain.root)


def test_key_is_pkcs8(chain) -> None:  # type: ignore[no-untyped-def]
    out = certificates.pkcs12_to_pem(chain.pfx_b64(), construct_chain=True)
    assert out.startswith("-----BEGIN PRIVATE KEY-----\n")


def test_bad_pfx() -> None:
    with pytest.raises(ConversionError):
        certificates.pkcs12_to_pem("not base64!", True)
    with pytest.raises(ConversionError):
        certificates.pkcs12_to_pem(base64.b64encode(b"junk").decode(), True)


def test_split_cert_and_key(chain) -> None:  # type: ignore[no-untyped-def]
    combined = (chain.key_pkcs8_pem + chain.ordered_pem).decode()
    cert, key = certificates.split_cert_and_key(combined)
    assert cert == chain.ordered_pem and key == chain.key_pkcs8_pem
    # Junk between blocks is dropped, as Go's pem.Decode does.
    cert, key = certificates.split_cert_and_key(
        "junk\n" + combined.replace("-----\n-----BEGIN CERT", "-----\ntext\n-----BEGIN CERT", 1)
    )
    assert cert == chain.ordered_pem and key == chain.key_pkcs8_pem
    assert certificates.split_cert_and_key("no pem here") == (b"", b"")


def test_public_key_pem_rsa_and_ec() -> None:
    key = rsa.generate_private_key(65537, 2048)
    nums = key.public_key().public_numbers()
    pem = certificates.public_key_pem(
        "RSA", n=nums.n.to_bytes(256, "big"), e=nums.e.to_bytes(3, "big")
    )
    assert pem == key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    for crv, curve, size in (
        ("P-256", ec.SECP256R1(), 32),
        ("P-384", ec.SECP384R1(), 48),
        ("P-521", ec.SECP521R1(), 66),
    ):
        eckey = ec.generate_private_key(curve)
        p = eckey.public_key().public_numbers()
        pem = certificates.public_key_pem(
            "EC-HSM", crv=crv, x=p.x.to_bytes(size, "big"), y=p.y.to_bytes(size, "big")
        )
        assert pem == eckey.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    with pytest.raises(ConversionError, match="curve P-256K is not supported"):
        certificates.public_key_pem("EC", crv="P-256K", x=b"\x01", y=b"\x02")
    with pytest.raises(ConversionError, match="key type 'oct' currently not supported"):
        certificates.public_key_pem("oct")


@settings(deadline=None)
@given(st.binary(max_size=3000), st.sampled_from(["CERTIFICATE", "PRIVATE KEY", "X"]))
def test_pem_round_trip_matches_standard_encoding(data: bytes, kind: str) -> None:
    encoded = certificates.pem_encode(certificates.PemBlock(kind, data))
    lines = encoded.decode().splitlines()
    assert all(len(line) <= 64 for line in lines[1:-1])
    assert certificates.pem_decode_all(encoded.decode()) == [certificates.PemBlock(kind, data)]


@settings(deadline=None)
@given(st.binary(max_size=200))
def test_encodings(data: bytes) -> None:
    assert (
        content_bytes(base64.b64encode(data).decode(), ObjectType.SECRET, ObjectEncoding.BASE64)
        == data
    )
    assert content_bytes(data.hex(), ObjectType.SECRET, ObjectEncoding.HEX) == data
    assert content_bytes(data.hex().upper(), ObjectType.SECRET, ObjectEncoding.HEX) == data


def test_encoding_rules() -> None:
    assert content_bytes("héllo", ObjectType.SECRET, ObjectEncoding.UTF8) == "héllo".encode()
    assert content_bytes("abc", ObjectType.KEY, ObjectEncoding.BASE64) == b"abc"
    with pytest.raises(ConversionError, match="not valid base64"):
        content_bytes("a$b", ObjectType.SECRET, ObjectEncoding.BASE64)
    # characters outside the alphabet are refused, not skipped (Go skips only \r and \n)
    for bad in ("ab$cd", "YW Jj", "YWJj\t"):
        with pytest.raises(ConversionError, match="not valid base64"):
            content_bytes(bad, ObjectType.SECRET, ObjectEncoding.BASE64)
    assert content_bytes("YW\r\nJj", ObjectType.SECRET, ObjectEncoding.BASE64) == b"abc"
    with pytest.raises(ConversionError, match="not valid hex"):
        content_bytes("abc", ObjectType.SECRET, ObjectEncoding.HEX)
