"""Splits a mounted certificate bundle into the keys of a `kubernetes.io/tls` Secret.

The mounted file is what the provider wrote for a certificate: PEM (private key and chain in
any order), a binary PFX, or a PFX as base64 text. Upstream writes `tls.crt` as every
certificate in the file and `tls.key` as the private key, an RSA key re-encoded as PKCS#1
(`RSA PRIVATE KEY`) and an ECDSA key as SEC 1; other key types are refused. We do the same and
put the leaf first (ingress controllers want it so), and add `ca.crt`: the chain above the leaf.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import re

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs12

TLS_CERT = "tls.crt"
TLS_KEY = "tls.key"
CA_CERT = "ca.crt"

_PEM_BLOCK = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----\r?\n.*?-----END \1-----", re.DOTALL)
_KEY_TYPES = {b"PRIVATE KEY", b"RSA PRIVATE KEY", b"EC PRIVATE KEY"}


class TlsError(ValueError):
    """The bundle cannot give the asked key; the message names no secret material."""


class Bundle:
    def __init__(self, certs: list[x509.Certificate], key: object | None) -> None:
        self.certs = certs
        self.key = key


def _parse_pem(content: bytes) -> Bundle:
    certs: list[x509.Certificate] = []
    key: object | None = None
    key_seen = False
    for m in _PEM_BLOCK.finditer(content):
        kind, block = m.group(1), m.group(0)
        if kind == b"CERTIFICATE":
            try:
                certs.append(x509.load_pem_x509_certificate(block))
            except ValueError:
                raise TlsError("a CERTIFICATE block cannot be parsed") from None
        elif kind in _KEY_TYPES:
            key_seen = True
            try:
                key = serialization.load_pem_private_key(block, password=None)
            except (ValueError, TypeError, NotImplementedError):
                raise TlsError(f"the {kind.decode()} block cannot be parsed") from None
        elif kind == b"ENCRYPTED PRIVATE KEY":
            raise TlsError("the private key is encrypted")
    if key_seen and key is None:
        raise TlsError("the private key cannot be parsed")
    return Bundle(certs, key)


def _parse_pfx(content: bytes) -> Bundle | None:
    candidates = [content]
    with contextlib.suppress(binascii.Error, ValueError):
        candidates.append(base64.b64decode(content.strip(), validate=True))
    for data in candidates:
        for password in (None, b""):
            try:
                key, cert, extra = pkcs12.load_key_and_certificates(data, password)
            except (ValueError, TypeError):
                continue
            certs = ([cert] if cert is not None else []) + list(extra)
            return Bundle(certs, key)
    return None


def parse(content: bytes) -> Bundle:
    if b"-----BEGIN " in content:
        return _parse_pem(content)
    bundle = _parse_pfx(content)
    if bundle is None:
        raise TlsError("the file is neither PEM nor PKCS#12 (PFX)")
    return bundle


def _leaf_index(bundle: Bundle) -> int:
    """The certificate of the private key; else the one that issued no other; else the first."""
    if bundle.key is not None and hasattr(bundle.key, "public_key"):
        pub = bundle.key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        for i, cert in enumerate(bundle.certs):
            own = cert.public_key().public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            if own == pub:
                return i
    for i, cert in enumerate(bundle.certs):
        if not any(o is not cert and o.issuer == cert.subject for o in bundle.certs):
            return i
    return 0


def _pem(certs: list[x509.Certificate]) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def cert_part(bundle: Bundle, key: str) -> bytes:
    """`tls.crt`, `tls.key` or `ca.crt` from a parsed bundle; TlsError when it cannot."""
    if key == TLS_KEY:
        k = bundle.key
        if k is None:
            raise TlsError("no private key found")
        # TraditionalOpenSSL: PKCS#1 `RSA PRIVATE KEY` (as upstream), SEC 1 `EC PRIVATE KEY`
        if not isinstance(k, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
            raise TlsError(
                f"unsupported private key type {type(k).__name__.lstrip('_')}: "
                "only RSA and ECDSA keys are supported"
            )
        return k.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    if not bundle.certs:
        raise TlsError("no certificate found")
    leaf = _leaf_index(bundle)
    if key == TLS_CERT:
        return _pem([bundle.certs[leaf], *(c for i, c in enumerate(bundle.certs) if i != leaf)])
    if key == CA_CERT:
        chain = [c for i, c in enumerate(bundle.certs) if i != leaf]
        if not chain:
            raise TlsError("no certificate above the leaf for ca.crt")
        return _pem(chain)
    raise ValueError(key)


def tls_value(content: bytes, key: str) -> bytes:
    """The value of data key `key` in a tls Secret built from `content` (others: as is)."""
    if key not in (TLS_CERT, TLS_KEY, CA_CERT):
        return content
    return cert_part(parse(content), key)
