"""Certificate and key conversions, byte-for-byte as upstream writes them.

- A PKCS#12 certificate secret becomes its private key(s) as PKCS#8 `PRIVATE KEY` PEM, then its
  certificates, ordered leaf→intermediate→root when the chain is complete (upstream's
  fetchCertChains: links by Authority/Subject Key Identifier; incomplete chains keep their order).
- A `key` becomes a PKIX `PUBLIC KEY` PEM built from the JWK (RSA and EC P-256/384/521).
- PEM is read and written the way Go's encoding/pem does, so splitting cert and key keeps bytes.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import re
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs12

CERTIFICATE = "CERTIFICATE"
_BEGIN = re.compile(r"-----BEGIN ([^\r\n]*?)-----[ \t]*\r?\n")


class ConversionError(ValueError):
    """Content that cannot be converted (never carries the content itself)."""


@dataclass(frozen=True)
class PemBlock:
    type: str
    data: bytes
    headers: tuple[tuple[str, str], ...] = ()


def pem_encode(block: PemBlock) -> bytes:
    """Go's pem.EncodeToMemory: Proc-Type header first, others sorted, 64-column base64."""
    out = [f"-----BEGIN {block.type}-----\n".encode()]
    if block.headers:
        headers = dict(block.headers)
        if "Proc-Type" in headers:
            out.append(f"Proc-Type: {headers.pop('Proc-Type')}\n".encode())
        for key in sorted(headers):
            out.append(f"{key}: {headers[key]}\n".encode())
        out.append(b"\n")
    encoded = base64.b64encode(block.data)
    for i in range(0, len(encoded), 64):
        out.append(encoded[i : i + 64] + b"\n")
    out.append(f"-----END {block.type}-----\n".encode())
    return b"".join(out)


def pem_decode_all(data: str) -> list[PemBlock]:
    """Every block Go's pem.Decode would find, in order (undecodable blocks are skipped)."""
    blocks: list[PemBlock] = []
    pos = 0
    while True:
        match = _BEGIN.search(data, pos)
        if match is None:
            return blocks
        if match.start() != 0 and data[match.start() - 1] != "\n":
            pos = match.end()
            continue
        block_type = match.group(1)
        end_marker = f"-----END {block_type}-----"
        end = data.find(end_marker, match.end())
        if end < 0:
            return blocks
        body = data[match.end() : end]
        pos = end + len(end_marker)
        headers: list[tuple[str, str]] = []
        lines = body.split("\n")
        if lines and ":" in lines[0]:
            while lines and ":" in lines[0]:
                key, _, value = lines.pop(0).partition(":")
                headers.append((key.strip(), value.strip()))
            if lines and lines[0].strip() == "":
                lines.pop(0)
        try:
            raw = base64.b64decode("".join("".join(lines).split()), validate=True)
        except (binascii.Error, ValueError):
            continue
        blocks.append(PemBlock(block_type, raw, tuple(headers)))


def split_cert_and_key(content: str) -> tuple[bytes, bytes]:
    """Upstream's splitCertAndKey: CERTIFICATE blocks first, every other block second."""
    cert: list[bytes] = []
    key: list[bytes] = []
    for block in pem_decode_all(content):
        (cert if block.type == CERTIFICATE else key).append(pem_encode(block))
    return b"".join(cert), b"".join(key)


def pkcs12_to_pem(value: str, construct_chain: bool) -> str:
    """Base64 PKCS#12 (empty password, as Key Vault exports it) to key PEM + certificate PEM."""
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ConversionError("certificate secret is not valid base64 PKCS#12") from None
    try:
        bundle = pkcs12.load_pkcs12(raw, None)
    except ValueError:
        try:
            bundle = pkcs12.load_pkcs12(raw, b"")
        except ValueError:
            raise ConversionError(
                "certificate secret is not a PKCS#12 archive with an empty password"
            ) from None
    key_pem = b""
    if bundle.key is not None:
        key_pem = bundle.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    certs = ([bundle.cert] if bundle.cert is not None else []) + list(bundle.additional_certs)
    cert_pem = b"".join(
        pem_encode(PemBlock(CERTIFICATE, c.certificate.public_bytes(serialization.Encoding.DER)))
        for c in certs
    )
    if construct_chain:
        cert_pem = order_chain(cert_pem)
    return (key_pem + cert_pem).decode()


def _key_ids(cert: x509.Certificate) -> tuple[bytes | None, bytes | None]:
    aki: bytes | None = None
    ski: bytes | None = None
    with contextlib.suppress(x509.ExtensionNotFound):
        aki = cert.extensions.get_extension_for_class(
            x509.AuthorityKeyIdentifier
        ).value.key_identifier
    with contextlib.suppress(x509.ExtensionNotFound):
        ski = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    return aki, ski


def order_chain(cert_pem: bytes) -> bytes:
    """leaf→intermediate→root by key identifiers; the input unchanged if the chain is incomplete."""
    blocks = [b for b in pem_decode_all(cert_pem.decode()) if True]
    certs: list[x509.Certificate] = []
    for block in blocks:
        try:
            certs.append(x509.load_der_x509_certificate(block.data))
        except ValueError:
            raise ConversionError("certificate in the chain cannot be parsed") from None
    ids = [_key_ids(c) for c in certs]
    parent: list[int | None] = [None] * len(certs)
    is_parent = [False] * len(certs)
    for i in range(len(certs)):
        for j in range(len(certs)):
            if i == j:
                continue
            aki, ski = ids[i][0], ids[j][1]
            if aki is None and ski is None:
                continue
            if (aki or b"") == (ski or b""):
                is_parent[j] = True
                parent[i] = j
                break
    leaf = next((i for i in range(len(certs)) if not is_parent[i]), None)
    if leaf is None:
        raise ConversionError("no leaf certificate found in the chain")
    chain: list[int] = []
    node: int | None = leaf
    while node is not None:
        if len(chain) >= len(certs):
            raise ConversionError("constructing the certificate chain resulted in a cycle")
        chain.append(node)
        node = parent[node]
    if len(chain) != len(certs):
        return cert_pem
    return b"".join(pem_encode(PemBlock(CERTIFICATE, blocks[i].data)) for i in chain)


def certificate_pem(der: bytes) -> bytes:
    return pem_encode(PemBlock(CERTIFICATE, der))


_CURVES: dict[str, ec.EllipticCurve] = {
    "P-256": ec.SECP256R1(),
    "P-384": ec.SECP384R1(),
    "P-521": ec.SECP521R1(),
}


def public_key_pem(
    kty: str,
    *,
    n: bytes | None = None,
    e: bytes | None = None,
    crv: str | None = None,
    x: bytes | None = None,
    y: bytes | None = None,
) -> bytes:
    """PKIX `PUBLIC KEY` PEM from a JSON Web Key's public parts."""
    if kty in ("RSA", "RSA-HSM"):
        if not n or not e:
            raise ConversionError("RSA key has no modulus or exponent")
        public: rsa.RSAPublicKey | ec.EllipticCurvePublicKey = rsa.RSAPublicNumbers(
            int.from_bytes(e, "big"), int.from_bytes(n, "big")
        ).public_key()
    elif kty in ("EC", "EC-HSM"):
        curve = _CURVES.get(crv or "")
        if curve is None:
            raise ConversionError(f"curve {crv} is not supported")
        if not x or not y:
            raise ConversionError("EC key has no x or y coordinate")
        try:
            public = ec.EllipticCurvePublicNumbers(
                int.from_bytes(x, "big"), int.from_bytes(y, "big"), curve
            ).public_key()
        except ValueError:
            raise ConversionError("EC key point is not on its curve") from None
    else:
        raise ConversionError(f"failed to get key. key type '{kty}' currently not supported")
    der = public.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return pem_encode(PemBlock("PUBLIC KEY", der))
