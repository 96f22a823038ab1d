"""PKCS#12 as Key Vault exports a certificate's secret: an empty password, the key in a
pkcs8ShroudedKeyBag (pbeWithSHAAnd3-KeyTripleDES-CBC), the certificates in plain data, and a
SHA-1 MAC. The `cryptography` encoder cannot make this (it refuses an empty password with
legacy algorithms and MACs with SHA-256 otherwise), and older PKCS#12 readers, such as the
one inside the upstream Go provider, read only SHA-1 MACs. RFC 7292; DER written by hand."""

from __future__ import annotations

import hashlib
import hmac
import os

from cryptography import x509
from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives import padding, serialization
from cryptography.hazmat.primitives.ciphers import Cipher, modes

from .store import PrivateKey

ITERATIONS = 2048
OID_DATA = "1.2.840.113549.1.7.1"
OID_SHROUDED_KEY_BAG = "1.2.840.113549.1.12.10.1.2"
OID_CERT_BAG = "1.2.840.113549.1.12.10.1.3"
OID_X509_CERT = "1.2.840.113549.1.9.22.1"
OID_LOCAL_KEY_ID = "1.2.840.113549.1.9.21"
OID_PBE_SHA1_3DES = "1.2.840.113549.1.12.1.3"
OID_SHA1 = "1.3.14.3.2.26"


def _len(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    body = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(body)]) + body


def _tlv(tag: int, content: bytes) -> bytes:
    return bytes([tag]) + _len(len(content)) + content


def _seq(*items: bytes) -> bytes:
    return _tlv(0x30, b"".join(items))


def _set(*items: bytes) -> bytes:
    return _tlv(0x31, b"".join(sorted(items)))


def _octets(data: bytes) -> bytes:
    return _tlv(0x04, data)


def _int(value: int) -> bytes:
    return _tlv(0x02, value.to_bytes(value.bit_length() // 8 + 1, "big"))


def _explicit0(content: bytes) -> bytes:
    return _tlv(0xA0, content)


def _oid(dotted: str) -> bytes:
    parts = [int(p) for p in dotted.split(".")]
    out = bytearray([40 * parts[0] + parts[1]])
    for p in parts[2:]:
        chunk = [p & 0x7F]
        p >>= 7
        while p:
            chunk.append(0x80 | (p & 0x7F))
            p >>= 7
        out += bytes(reversed(chunk))
    return _tlv(0x06, bytes(out))


def _bmp(password: str) -> bytes:
    """BMPString with the two-byte terminator (so "" is 00 00), as RFC 7292 B.1 says."""
    return password.encode("utf-16-be") + b"\x00\x00"


def _kdf(password: bytes, salt: bytes, ident: int, iterations: int, size: int) -> bytes:
    """RFC 7292 appendix B.2 with SHA-1 (u = 20, v = 64)."""
    u, v = 20, 64
    d = bytes([ident]) * v

    def stretch(data: bytes) -> bytes:
        if not data:
            return b""
        n = v * ((len(data) + v - 1) // v)
        return (data * (n // len(data) + 1))[:n]

    i = bytearray(stretch(salt) + stretch(password))
    out = b""
    while len(out) < size:
        a = d + bytes(i)
        for _ in range(iterations):
            a = hashlib.sha1(a).digest()  # noqa: S324  PKCS#12 key derivation (RFC 7292, B.2)
        out += a
        b = int.from_bytes((a * (v // u + 1))[:v], "big")
        for j in range(0, len(i), v):
            block = (int.from_bytes(i[j : j + v], "big") + b + 1) % (1 << (v * 8))
            i[j : j + v] = block.to_bytes(v, "big")
    return out[:size]


def _shroud(key: PrivateKey, password: bytes) -> bytes:
    pkcs8 = key.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    salt = os.urandom(8)
    k = _kdf(password, salt, 1, ITERATIONS, 24)
    iv = _kdf(password, salt, 2, ITERATIONS, 8)
    padder = padding.PKCS7(64).padder()
    data = padder.update(pkcs8) + padder.finalize()
    enc = Cipher(TripleDES(k), modes.CBC(iv)).encryptor()
    encrypted = enc.update(data) + enc.finalize()
    algorithm = _seq(_oid(OID_PBE_SHA1_3DES), _seq(_octets(salt), _int(ITERATIONS)))
    return _seq(algorithm, _octets(encrypted))


def _attrs(key_id: bytes | None) -> bytes:
    if key_id is None:
        return b""
    return _set(_seq(_oid(OID_LOCAL_KEY_ID), _set(_octets(key_id))))


def _data(content: bytes) -> bytes:
    return _seq(_oid(OID_DATA), _explicit0(_octets(content)))


def export(key: PrivateKey, leaf: x509.Certificate, chain: list[x509.Certificate]) -> bytes:
    """The PFX (DER) with an empty password: key, leaf (sharing a localKeyId), then the chain."""
    password = _bmp("")
    leaf_der = leaf.public_bytes(serialization.Encoding.DER)
    key_id = hashlib.sha1(leaf_der).digest()  # noqa: S324  localKeyId, as OpenSSL writes it
    cert_bags = []
    for cert in [leaf, *chain]:
        der = cert.public_bytes(serialization.Encoding.DER)
        value = _seq(_oid(OID_X509_CERT), _explicit0(_octets(der)))
        cert_bags.append(
            _seq(_oid(OID_CERT_BAG), _explicit0(value), _attrs(key_id if cert is leaf else None))
        )
    key_bag = _seq(_oid(OID_SHROUDED_KEY_BAG), _explicit0(_shroud(key, password)), _attrs(key_id))
    auth_safe = _seq(_data(_seq(key_bag)), _data(_seq(*cert_bags)))
    salt = os.urandom(8)
    mac_key = _kdf(password, salt, 3, ITERATIONS, 20)
    digest = hmac.new(mac_key, auth_safe, hashlib.sha1).digest()
    mac_data = _seq(
        _seq(_seq(_oid(OID_SHA1), _tlv(0x05, b"")), _octets(digest)),
        _octets(salt),
        _int(ITERATIONS),
    )
    return _seq(_int(3), _data(auth_safe), mac_data)
