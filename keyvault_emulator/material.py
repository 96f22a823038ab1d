"""Key and certificate material: generation, JWK form, PEM/PFX parsing and export."""

from __future__ import annotations

import base64
import datetime
import hashlib
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import NameOID

from . import pfx
from .store import PrivateKey
from .tokens import b64url, b64url_uint

CURVES: dict[str, type[ec.EllipticCurve]] = {
    "P-256": ec.SECP256R1,
    "P-384": ec.SECP384R1,
    "P-521": ec.SECP521R1,
    "P-256K": ec.SECP256K1,
}
CURVE_NAMES = {
    "secp256r1": "P-256",
    "secp384r1": "P-384",
    "secp521r1": "P-521",
    "secp256k1": "P-256K",
}
RSA_SIZES = (2048, 3072, 4096)
RSA_OPS = ["encrypt", "decrypt", "sign", "verify", "wrapKey", "unwrapKey"]
EC_OPS = ["sign", "verify"]
PEM_CONTENT_TYPE = "application/x-pem-file"
PFX_CONTENT_TYPE = "application/x-pkcs12"
NO_PEM_KEY = (
    "Private key is not specified in the specified X.509 PEM certificate content. "
    "Please specify private key in the X.509 PEM certificate content."
)


class MaterialError(ValueError):
    """Bad key or certificate material; the message is safe to return to the client."""


def generate_key(
    kty: str, size: int | None = None, curve: str | None = None, public_exponent: int | None = None
) -> PrivateKey:
    base = kty.upper().removesuffix("-HSM")
    if base == "RSA":
        size = size or 2048
        if size not in RSA_SIZES:
            raise MaterialError(f"Invalid key size {size}. Supported sizes: 2048, 3072, 4096.")
        return rsa.generate_private_key(public_exponent=public_exponent or 65537, key_size=size)
    if base == "EC":
        curve = curve or "P-256"
        if curve not in CURVES:
            raise MaterialError(f"Invalid curve name {curve}.")
        return ec.generate_private_key(CURVES[curve]())
    raise MaterialError(f"Unsupported key type {kty}.")


def key_kty(key: PrivateKey) -> str:
    return "RSA" if isinstance(key, rsa.RSAPrivateKey) else "EC"


def public_jwk(key: PrivateKey, kid: str, kty: str, key_ops: list[str]) -> dict[str, Any]:
    """The public half only, as Key Vault answers a key GET."""
    jwk: dict[str, Any] = {"kid": kid, "kty": kty, "key_ops": list(key_ops)}
    if isinstance(key, rsa.RSAPrivateKey):
        pub = key.public_key().public_numbers()
        jwk["n"] = b64url_uint(pub.n)
        jwk["e"] = b64url_uint(pub.e)
    else:
        epub = key.public_key().public_numbers()
        size = (key.curve.key_size + 7) // 8
        jwk["crv"] = CURVE_NAMES[key.curve.name]
        jwk["x"] = b64url(epub.x.to_bytes(size, "big"))
        jwk["y"] = b64url(epub.y.to_bytes(size, "big"))
    return jwk


def _b64url_int(jwk: dict[str, Any], field: str) -> int:
    value = jwk.get(field)
    if not isinstance(value, str) or not value:
        raise MaterialError(f"The JSON Web Key is missing the '{field}' field.")
    try:
        return int.from_bytes(base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)), "big")
    except ValueError as exc:
        raise MaterialError(f"The JSON Web Key field '{field}' is not base64url.") from exc


def private_key_from_jwk(jwk: dict[str, Any]) -> PrivateKey:
    kty = str(jwk.get("kty", "")).upper().removesuffix("-HSM")
    if "d" not in jwk:
        raise MaterialError("The JSON Web Key to import must contain private key material.")
    if kty == "RSA":
        n, e, d = (_b64url_int(jwk, f) for f in ("n", "e", "d"))
        if all(f in jwk for f in ("p", "q")):
            p, q = _b64url_int(jwk, "p"), _b64url_int(jwk, "q")
        else:
            p, q = rsa.rsa_recover_prime_factors(n, e, d)
        dp = _b64url_int(jwk, "dp") if "dp" in jwk else rsa.rsa_crt_dmp1(d, p)
        dq = _b64url_int(jwk, "dq") if "dq" in jwk else rsa.rsa_crt_dmq1(d, q)
        qi = _b64url_int(jwk, "qi") if "qi" in jwk else rsa.rsa_crt_iqmp(p, q)
        try:
            return rsa.RSAPrivateNumbers(
                p, q, d, dp, dq, qi, rsa.RSAPublicNumbers(e, n)
            ).private_key()
        except ValueError as exc:
            raise MaterialError("The RSA JSON Web Key is not a valid key.") from exc
    if kty == "EC":
        crv = str(jwk.get("crv", ""))
        if crv not in CURVES:
            raise MaterialError(f"Invalid curve name {crv}.")
        d = _b64url_int(jwk, "d")
        try:
            return ec.derive_private_key(d, CURVES[crv]())
        except ValueError as exc:
            raise MaterialError("The EC JSON Web Key is not a valid key.") from exc
    raise MaterialError(f"Unsupported key type {jwk.get('kty')}.")


def load_private_key_pem(pem: bytes, password: bytes | None = None) -> PrivateKey:
    try:
        key = serialization.load_pem_private_key(pem, password)
    except (ValueError, TypeError) as exc:
        raise MaterialError("The private key could not be read.") from exc
    if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        raise MaterialError("Only RSA and EC keys are supported.")
    return key


@dataclass
class CertMaterial:
    key: PrivateKey
    leaf: x509.Certificate
    chain: list[x509.Certificate]


def _matches(key: PrivateKey, cert: x509.Certificate) -> bool:
    fmt = serialization.PublicFormat.SubjectPublicKeyInfo
    enc = serialization.Encoding.DER
    return key.public_key().public_bytes(enc, fmt) == cert.public_key().public_bytes(enc, fmt)


def parse_pem_bundle(text: str) -> CertMaterial:
    """PEM with a private key and certificates; the leaf is the one matching the key."""
    data = text.encode()
    if b"PRIVATE KEY-----" not in data:
        raise MaterialError(NO_PEM_KEY)
    blocks = _pem_blocks(data)
    key: PrivateKey | None = None
    certs: list[x509.Certificate] = []
    for label, block in blocks:
        if label.endswith("PRIVATE KEY"):
            key = load_private_key_pem(block)
        elif label == "CERTIFICATE":
            try:
                certs.append(x509.load_pem_x509_certificate(block))
            except ValueError as exc:
                raise MaterialError(
                    "The specified PEM X.509 certificate content is invalid."
                ) from exc
    if key is None:
        raise MaterialError(NO_PEM_KEY)
    if not certs:
        raise MaterialError(
            "The specified PEM X.509 certificate content does not contain a certificate."
        )
    return _order(key, certs)


def _pem_blocks(data: bytes) -> list[tuple[str, bytes]]:
    out: list[tuple[str, bytes]] = []
    pos = 0
    while True:
        begin = data.find(b"-----BEGIN ", pos)
        if begin < 0:
            return out
        label_end = data.find(b"-----", begin + 11)
        label = data[begin + 11 : label_end].decode(errors="replace")
        end_marker = b"-----END " + label.encode() + b"-----"
        end = data.find(end_marker, label_end)
        if end < 0:
            raise MaterialError(f"Unterminated PEM block {label}.")
        out.append((label, data[begin : end + len(end_marker)] + b"\n"))
        pos = end + len(end_marker)


def _order(key: PrivateKey, certs: list[x509.Certificate]) -> CertMaterial:
    leaves = [c for c in certs if _matches(key, c)]
    if not leaves:
        raise MaterialError("The private key does not match any certificate in the content.")
    leaf = leaves[0]
    return CertMaterial(key, leaf, [c for c in certs if c is not leaf])


def parse_pfx(data: bytes, password: str | None) -> CertMaterial:
    pwd = password.encode() if password else None
    try:
        key, cert, extra = pkcs12.load_key_and_certificates(data, pwd)
    except ValueError:
        if pwd is None:
            try:
                key, cert, extra = pkcs12.load_key_and_certificates(data, b"")
            except ValueError as exc:
                raise MaterialError(
                    "Private key is not specified in the specified X.509 PEM certificate content "
                    "or the password for the PFX is incorrect."
                ) from exc
        else:
            raise MaterialError(
                "The specified PKCS#12 X.509 certificate content can not be read. Please check "
                "if certificate is in valid PKCS#12 format or the password is correct."
            ) from None
    if key is None or not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        raise MaterialError(
            "The specified PKCS#12 X.509 certificate content does not contain a private key."
        )
    certs = ([cert] if cert else []) + list(extra)
    if not certs:
        raise MaterialError("The specified PKCS#12 X.509 certificate content has no certificate.")
    return _order(key, certs)


def secret_value(material: CertMaterial, content_type: str) -> str:
    """What Key Vault stores in a certificate's secret: PKCS#8 key + chain PEM, or PFX base64."""
    if content_type == PEM_CONTENT_TYPE:
        key_pem = material.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        certs = b"".join(
            c.public_bytes(serialization.Encoding.PEM) for c in [material.leaf, *material.chain]
        )
        return (key_pem + certs).decode()
    return base64.b64encode(pfx.export(material.key, material.leaf, material.chain)).decode()


def x5t(der: bytes) -> str:
    return b64url(hashlib.sha1(der).digest())  # noqa: S324  x5t is SHA-1 by definition (RFC 7515)


_DN_OIDS = {
    "CN": NameOID.COMMON_NAME,
    "O": NameOID.ORGANIZATION_NAME,
    "OU": NameOID.ORGANIZATIONAL_UNIT_NAME,
    "C": NameOID.COUNTRY_NAME,
    "L": NameOID.LOCALITY_NAME,
    "ST": NameOID.STATE_OR_PROVINCE_NAME,
    "S": NameOID.STATE_OR_PROVINCE_NAME,
    "E": NameOID.EMAIL_ADDRESS,
    "DC": NameOID.DOMAIN_COMPONENT,
}


def parse_subject(subject: str) -> x509.Name:
    attrs: list[x509.NameAttribute[str]] = []
    for part in subject.split(","):
        part = part.strip()
        if not part:
            continue
        if "=" not in part:
            raise MaterialError(f"Invalid subject name: {subject}")
        k, v = part.split("=", 1)
        oid = _DN_OIDS.get(k.strip().upper())
        if oid is None:
            raise MaterialError(f"Invalid subject name: {subject}")
        attrs.append(x509.NameAttribute(oid, v.strip()))
    if not attrs:
        raise MaterialError(f"Invalid subject name: {subject}")
    return x509.Name(attrs)


_KEY_USAGE_FIELDS = {
    "digitalSignature": "digital_signature",
    "nonRepudiation": "content_commitment",
    "keyEncipherment": "key_encipherment",
    "dataEncipherment": "data_encipherment",
    "keyAgreement": "key_agreement",
    "keyCertSign": "key_cert_sign",
    "cRLSign": "crl_sign",
    "encipherOnly": "encipher_only",
    "decipherOnly": "decipher_only",
}


def self_signed(key: PrivateKey, x509_props: dict[str, Any]) -> tuple[x509.Certificate, bytes]:
    """A self-signed certificate from a policy's x509_props; also returns a CSR (DER)."""
    subject = parse_subject(str(x509_props.get("subject") or "CN=emulator"))
    months = int(x509_props.get("validity_months") or 12)
    start = datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=5)
    end = start + datetime.timedelta(days=round(months * 30.4375))
    sans_in = x509_props.get("sans") or {}
    sans: list[x509.GeneralName] = [x509.DNSName(n) for n in sans_in.get("dns_names") or []]
    sans += [x509.RFC822Name(n) for n in sans_in.get("emails") or []]
    usages = set(x509_props.get("key_usage") or [])
    ekus = x509_props.get("ekus") or ["1.3.6.1.5.5.7.3.1", "1.3.6.1.5.5.7.3.2"]
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    if usages:
        flags = {f: (name in usages) for name, f in _KEY_USAGE_FIELDS.items()}
        builder = builder.add_extension(x509.KeyUsage(**flags), critical=True)
    if ekus:
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([x509.ObjectIdentifier(o) for o in ekus]), critical=False
        )
    cert = builder.sign(key, hashes.SHA256())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(subject)
        .sign(key, hashes.SHA256())
        .public_bytes(serialization.Encoding.DER)
    )
    return cert, csr
