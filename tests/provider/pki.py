"""Test certificates: a root → intermediate → leaf chain (RSA or EC leaf), PEM and PFX forms."""

from __future__ import annotations

import base64
import datetime
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import NameOID

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


@dataclass(frozen=True)
class Chain:
    key: PrivateKey
    leaf: x509.Certificate
    intermediate: x509.Certificate
    root: x509.Certificate

    def pem(self, cert: x509.Certificate) -> bytes:
        return cert.public_bytes(serialization.Encoding.PEM)

    @property
    def key_pkcs8_pem(self) -> bytes:
        return self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    @property
    def ordered_pem(self) -> bytes:
        return b"".join(self.pem(c) for c in (self.leaf, self.intermediate, self.root))

    def pfx(self, cas: list[x509.Certificate] | None = None) -> bytes:
        """Unencrypted PKCS#12 with an empty password, as a certificate secret holds it."""
        cas = [self.intermediate, self.root] if cas is None else cas
        encryption = serialization.NoEncryption()
        return pkcs12.serialize_key_and_certificates(b"leaf", self.key, self.leaf, cas, encryption)

    def pfx_b64(self, **kwargs: object) -> str:
        return base64.b64encode(self.pfx(**kwargs)).decode()  # type: ignore[arg-type]


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _cert(
    subject: str,
    public: object,
    issuer: str,
    issuer_key: PrivateKey,
    *,
    ca: bool,
    issuer_public: object,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(public)  # type: ignore[arg-type]
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)  # type: ignore[arg-type]
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_public),  # type: ignore[arg-type]
            critical=False,
        )
    )
    return builder.sign(issuer_key, hashes.SHA256())


def make_chain(kind: str = "rsa", cn: str = "leaf.test") -> Chain:
    root_key = ec.generate_private_key(ec.SECP256R1())
    inter_key = ec.generate_private_key(ec.SECP256R1())
    key: PrivateKey = (
        rsa.generate_private_key(65537, 2048)
        if kind == "rsa"
        else ec.generate_private_key(ec.SECP256R1())
    )
    root = _cert(
        "root",
        root_key.public_key(),
        "root",
        root_key,
        ca=True,
        issuer_public=root_key.public_key(),
    )
    inter = _cert(
        "intermediate",
        inter_key.public_key(),
        "root",
        root_key,
        ca=True,
        issuer_public=root_key.public_key(),
    )
    leaf = _cert(
        cn,
        key.public_key(),
        "intermediate",
        inter_key,
        ca=False,
        issuer_public=inter_key.public_key(),
    )
    return Chain(key, leaf, inter, root)
