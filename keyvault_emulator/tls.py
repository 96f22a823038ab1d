"""The emulator's own PKI: a CA (kept in the state dir), a server certificate for every name it
serves, and the Entra ID token-signing key."""

from __future__ import annotations

import datetime
import ipaddress
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

DEFAULT_SANS = [
    "login.microsoftonline.com",
    "*.vault.azure.net",
    "login.custom-cloud.test",
    "*.vault.custom-cloud.test",
    "management.azure.com",
    "localhost",
    "127.0.0.1",
    "::1",
]


@dataclass(frozen=True)
class Pki:
    ca_path: Path
    cert_path: Path
    key_path: Path
    signing_key: rsa.RSAPrivateKey
    signing_cert_der: bytes


def _utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _write_private(path: Path, data: bytes) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_bytes(data)
    tmp.chmod(0o600)
    tmp.replace(path)


def _load_or_make_ca(state: Path) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    ca_key_path, ca_path = state / "ca-key.pem", state / "ca.pem"
    if ca_key_path.exists() and ca_path.exists():
        key = serialization.load_pem_private_key(ca_key_path.read_bytes(), None)
        cert = x509.load_pem_x509_certificate(ca_path.read_bytes())
        if isinstance(key, ec.EllipticCurvePrivateKey) and cert.not_valid_after_utc > _utcnow():
            return key, cert
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Key Vault Emulator CA")])
    start = _utcnow() - datetime.timedelta(days=1)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + datetime.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .sign(key, hashes.SHA256())
    )
    _write_private(
        ca_key_path,
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )
    ca_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key, cert


def _san(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def _issue_server_cert(
    state: Path, ca_key: ec.EllipticCurvePrivateKey, ca: x509.Certificate, names: list[str]
) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    start = _utcnow() - datetime.timedelta(hours=1)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + datetime.timedelta(days=365))
        .add_extension(x509.SubjectAlternativeName([_san(n) for n in names]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    cert_path, key_path = state / "server.pem", state / "server-key.pem"
    _write_private(
        key_path,
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )
    cert_path.write_bytes(
        cert.public_bytes(serialization.Encoding.PEM) + ca.public_bytes(serialization.Encoding.PEM)
    )
    return cert_path, key_path


def _load_or_make_signing_key(state: Path) -> tuple[rsa.RSAPrivateKey, bytes]:
    path, cert_path = state / "entra-signing-key.pem", state / "entra-signing-cert.pem"
    if path.exists() and cert_path.exists():
        key = serialization.load_pem_private_key(path.read_bytes(), None)
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        if isinstance(key, rsa.RSAPrivateKey):
            return key, cert.public_bytes(serialization.Encoding.DER)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "accounts.emulator.test")])
    start = _utcnow() - datetime.timedelta(days=1)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + datetime.timedelta(days=3650))
        .sign(key, hashes.SHA256())
    )
    _write_private(
        path,
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key, cert.public_bytes(serialization.Encoding.DER)


def ensure_pki(state_dir: Path, extra_sans: list[str] | None = None) -> Pki:
    """Creates what is missing; the server certificate is reissued on every start (cheap, EC)."""
    state_dir.mkdir(parents=True, exist_ok=True)
    ca_key, ca = _load_or_make_ca(state_dir)
    names = list(dict.fromkeys(DEFAULT_SANS + list(extra_sans or [])))
    cert_path, key_path = _issue_server_cert(state_dir, ca_key, ca, names)
    signing_key, signing_cert_der = _load_or_make_signing_key(state_dir)
    return Pki(state_dir / "ca.pem", cert_path, key_path, signing_key, signing_cert_der)


def server_ssl_context(pki: Pki) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(str(pki.cert_path), str(pki.key_path))
    return ctx
