"""Certificate policies as Key Vault stores them: the default, one from a request over an
existing one, one read back from imported material; and a self-signed certificate made to a
policy."""

from __future__ import annotations

import copy
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from .errors import bad_parameter
from .material import (
    CURVE_NAMES,
    PEM_CONTENT_TYPE,
    PFX_CONTENT_TYPE,
    CertMaterial,
    generate_key,
    self_signed,
)
from .store import now

CONTENT_TYPES = (PEM_CONTENT_TYPE, PFX_CONTENT_TYPE)

_KU_NAMES = {
    "digital_signature": "digitalSignature",
    "content_commitment": "nonRepudiation",
    "key_encipherment": "keyEncipherment",
    "data_encipherment": "dataEncipherment",
    "key_agreement": "keyAgreement",
    "key_cert_sign": "keyCertSign",
    "crl_sign": "cRLSign",
}


def _key_props(key: Any) -> dict[str, Any]:
    if isinstance(key, rsa.RSAPrivateKey):
        return {"exportable": True, "kty": "RSA", "key_size": key.key_size, "reuse_key": False}
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return {
        "exportable": True,
        "kty": "EC",
        "key_size": key.curve.key_size,
        "crv": CURVE_NAMES[key.curve.name],
        "reuse_key": False,
    }


def _x509_props(cert: x509.Certificate) -> dict[str, Any]:
    props: dict[str, Any] = {"subject": cert.subject.rfc4514_string()}
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        sans: dict[str, list[str]] = {}
        dns = san.get_values_for_type(x509.DNSName)
        emails = san.get_values_for_type(x509.RFC822Name)
        if dns:
            sans["dns_names"] = dns
        if emails:
            sans["emails"] = emails
        if sans:
            props["sans"] = sans
    except x509.ExtensionNotFound:
        pass
    try:
        eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        props["ekus"] = [o.dotted_string for o in eku]
    except x509.ExtensionNotFound:
        pass
    try:
        ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
        props["key_usage"] = [n for f, n in _KU_NAMES.items() if getattr(ku, f)]
    except x509.ExtensionNotFound:
        pass
    days = (cert.not_valid_after_utc - cert.not_valid_before_utc).days
    props["validity_months"] = max(1, round(days / 30.4375))
    return props


def policy_from_request(raw: Any, existing: dict[str, Any] | None) -> dict[str, Any]:
    """A full stored policy from a request's (possibly partial) one, over `existing`."""
    if raw is None:
        if existing is None:
            raise bad_parameter("Property 'policy' is required to create a certificate.")
        return copy.deepcopy(existing)
    if not isinstance(raw, dict):
        raise bad_parameter("Property 'policy' must be an object.")
    policy = copy.deepcopy(existing) if existing else default_policy()
    for section in ("key_props", "secret_props", "x509_props", "issuer"):
        value = raw.get(section)
        if value is None:
            continue
        if not isinstance(value, dict):
            raise bad_parameter(f"Property 'policy.{section}' must be an object.")
        policy.setdefault(section, {}).update(value)
    if raw.get("lifetime_actions") is not None:
        policy["lifetime_actions"] = raw["lifetime_actions"]
    if isinstance(raw.get("attributes"), dict):
        policy["attributes"].update({k: v for k, v in raw["attributes"].items() if k == "enabled"})
    ct = policy.get("secret_props", {}).get("contentType")
    if ct not in CONTENT_TYPES:
        raise bad_parameter(f"The content type '{ct}' is not supported.")
    policy["attributes"]["updated"] = now()
    return policy


def default_policy() -> dict[str, Any]:
    t = now()
    return {
        "key_props": {"exportable": True, "kty": "RSA", "key_size": 2048, "reuse_key": False},
        "secret_props": {"contentType": PFX_CONTENT_TYPE},
        "x509_props": {
            "subject": "CN=DefaultPolicy",
            "ekus": ["1.3.6.1.5.5.7.3.1", "1.3.6.1.5.5.7.3.2"],
            "key_usage": ["digitalSignature", "keyEncipherment"],
            "validity_months": 12,
        },
        "lifetime_actions": [
            {"trigger": {"lifetime_percentage": 80}, "action": {"action_type": "AutoRenew"}}
        ],
        "issuer": {"name": "Self"},
        "attributes": {"enabled": True, "created": t, "updated": t},
    }


def imported_policy(material: CertMaterial, content_type: str, raw: Any) -> dict[str, Any]:
    t = now()
    policy: dict[str, Any] = {
        "key_props": _key_props(material.key),
        "secret_props": {"contentType": content_type},
        "x509_props": _x509_props(material.leaf),
        "lifetime_actions": [
            {"trigger": {"lifetime_percentage": 80}, "action": {"action_type": "EmailContacts"}}
        ],
        "issuer": {"name": "Unknown"},
        "attributes": {"enabled": True, "created": t, "updated": t},
    }
    if isinstance(raw, dict):
        for section in ("key_props", "x509_props", "issuer"):
            if isinstance(raw.get(section), dict):
                policy[section].update(raw[section])
        if raw.get("lifetime_actions") is not None:
            policy["lifetime_actions"] = raw["lifetime_actions"]
    return policy


def generate(policy: dict[str, Any]) -> tuple[CertMaterial, bytes]:
    kp = policy.get("key_props", {})
    kty = str(kp.get("kty") or "RSA")
    size = kp.get("key_size") if kty.upper().startswith("RSA") else None
    key = generate_key(kty, size, kp.get("crv"))
    cert, csr = self_signed(key, policy.get("x509_props", {}))
    return CertMaterial(key, cert, []), csr
