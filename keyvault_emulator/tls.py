"""The emulator's own PKI: a CA (kept in the state dir), a server certificate for every name it
serves, and the Entra ID token-signing key."""

from __future__ import annotations

import datetime
import ipaddress
import logging
import os
import ssl
import stat
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

log = logging.getLogger("keyvault_emulator.tls")

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


def write_private(path: Path, data: bytes) -> None:
    """A private key, created 0600 (narrower under a stricter umask, never wider) and renamed
    into place: at no moment can another user read it. O_EXCL, after removing a stale temp
    file, so a file someone else made is never reused."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.unlink(missing_ok=True)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(tmp, flags, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    tmp.replace(path)


def ensure_state_dir(state_dir: Path) -> None:
    """The state dir holds private keys: created 0700; an existing one open to others is
    tightened to 0700 (logged), unless it is shared (sticky, like /tmp) or someone else's,
    which is logged and left alone (the key files themselves are 0600 either way)."""
    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = state_dir.stat()
    mode = stat.S_IMODE(st.st_mode)
    if not mode & 0o077:
        return
    where = {"state_dir": str(state_dir), "mode": oct(mode)}
    if mode & stat.S_ISVTX or st.st_uid != os.geteuid():
        log.warning("state dir is open to other users; left as it is", extra=where)
        return
    state_dir.chmod(0o700)
    log.warning("state dir was open to other users; tightened to 0700", extra=where)


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
    write_private(
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
    state: Path,
    ca_key: ec.EllipticCurvePrivateKey,
    ca: x509.Certificate,
    names: list[str],
    stem: str = "server",
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
    cert_path, key_path = state / f"{stem}.pem", state / f"{stem}-key.pem"
    write_private(
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
    write_private(
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
    ensure_state_dir(state_dir)
    ca_key, ca = _load_or_make_ca(state_dir)
    names = list(dict.fromkeys(DEFAULT_SANS + list(extra_sans or [])))
    cert_path, key_path = _issue_server_cert(state_dir, ca_key, ca, names)
    signing_key, signing_cert_der = _load_or_make_signing_key(state_dir)
    return Pki(state_dir / "ca.pem", cert_path, key_path, signing_key, signing_cert_der)


def server_ssl_context(pki: Pki) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(str(pki.cert_path), str(pki.key_path))
    return ctx


def token_proxy_ssl_context(
    state_dir: Path, sni_name: str, apiserver_sans: list[str] | None = None
) -> ssl.SSLContext:
    """The identity-binding proxy's listener: a certificate for `sni_name` only, from the
    emulator's CA (so a client checking any other name fails its handshake). With
    `apiserver_sans`, it is the AKS API server endpoint instead: a client that does not name
    `sni_name` gets a certificate for those names (the API server's, whose
    `hcp-kubernetes.<id>.svc.cluster.local` SAN clients compute the SNI name from)."""
    ca_key, ca = _load_or_make_ca(state_dir)
    proxy = _context_for(state_dir, ca_key, ca, [sni_name], "token-proxy")
    if not apiserver_sans:
        return proxy
    apiserver = _context_for(state_dir, ca_key, ca, apiserver_sans, "apiserver")

    def by_name(conn: ssl.SSLObject, name: str | None, _: ssl.SSLContext) -> None:
        if name == sni_name:
            conn.context = proxy

    apiserver.sni_callback = by_name
    return apiserver


def _context_for(
    state_dir: Path,
    ca_key: ec.EllipticCurvePrivateKey,
    ca: x509.Certificate,
    names: list[str],
    stem: str,
) -> ssl.SSLContext:
    cert_path, key_path = _issue_server_cert(state_dir, ca_key, ca, names, stem)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(str(cert_path), str(key_path))
    return ctx
