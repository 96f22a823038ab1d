# Over 400 lines: one object kind, its versions (each with its key and secret) and its routes.
"""Key Vault certificates: import (PEM or PFX), create self-signed, get, list, policy, update,
delete, recover, purge. Each version also creates its addressable key and secret, as Key Vault
does: same name, same version, `managed: true`."""

from __future__ import annotations

import asyncio
import base64
import binascii
import copy
from typing import Any

from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from . import vault_keys, vault_secrets
from .cert_policy import (
    CONTENT_TYPES,
    generate,
    imported_policy,
    policy_from_request,
)
from .errors import KeyVaultError, bad_parameter
from .material import (
    EC_OPS,
    PEM_CONTENT_TYPE,
    PFX_CONTENT_TYPE,
    RSA_OPS,
    CertMaterial,
    MaterialError,
    parse_pem_bundle,
    parse_pfx,
    secret_value,
    x5t,
)
from .routing import Router
from .store import (
    Attributes,
    CertificateVersion,
    Deleted,
    KeyVersion,
    PendingOperation,
    SecretVersion,
    Vault,
    after,
    new_version,
)
from .vault_common import (
    KvContext,
    deleted_conflict,
    find_deleted,
    json_ok,
    not_found,
    page,
    parse_attributes,
    parse_tags,
    pick_version,
    purge,
    soft_deleted,
    touch,
)

KIND = "certificates"
A = "Microsoft.KeyVault/vaults/certificates/"


def cert_id(base: str, vault: Vault, name: str, version: str | None = None) -> str:
    url = f"{base}/certificates/{vault.display(KIND, name)}"
    return f"{url}/{version}" if version else url


# --- policies -------------------------------------------------------------------------------


def policy_json(base: str, vault: Vault, name: str, policy: dict[str, Any]) -> dict[str, Any]:
    return {"id": f"{cert_id(base, vault, name)}/policy", **policy}


# --- versions -------------------------------------------------------------------------------


def add_version(
    vault: Vault,
    name: str,
    material: CertMaterial,
    policy: dict[str, Any],
    attributes: Attributes | None = None,
    tags: dict[str, str] | None = None,
    preserve_order: bool = False,
    version: str | None = None,
) -> CertificateVersion:
    """A certificate version with its managed key and secret (same name and version)."""
    version = version or new_version()
    leaf = material.leaf
    attrs = attributes or Attributes()
    after(vault.certificates.get(name.lower(), []), attrs)
    attrs.nbf = int(leaf.not_valid_before_utc.timestamp())
    attrs.exp = int(leaf.not_valid_after_utc.timestamp())
    der = leaf.public_bytes(serialization.Encoding.DER)
    chain = [c.public_bytes(serialization.Encoding.DER) for c in material.chain]
    cv = CertificateVersion(version, der, chain, copy.deepcopy(policy), attrs, tags, preserve_order)
    content_type = str(policy.get("secret_props", {}).get("contentType") or PFX_CONTENT_TYPE)
    kty = "RSA" if isinstance(material.key, rsa.RSAPrivateKey) else "EC"
    if policy.get("key_props", {}).get("kty", "").endswith("-HSM"):
        kty += "-HSM"

    def clone() -> Attributes:
        return Attributes(attrs.enabled, attrs.nbf, attrs.exp, attrs.created, attrs.updated)

    key = KeyVersion(
        version,
        material.key,
        kty,
        list(RSA_OPS if kty.startswith("RSA") else EC_OPS),
        clone(),
        tags,
        managed=True,
    )
    secret = SecretVersion(
        version,
        secret_value(material, content_type),
        content_type,
        clone(),
        tags,
        managed=True,
        key_version=version,
    )
    vault.remember_name(KIND, name)
    vault.certificates.setdefault(name.lower(), []).append(cv)
    vault.policies[name.lower()] = copy.deepcopy(policy)
    vault_keys.add_version(vault, name, key)
    vault_secrets.add_version(vault, name, secret)
    return cv


def bundle(base: str, vault: Vault, name: str, cv: CertificateVersion) -> dict[str, Any]:
    display = vault.display(KIND, name)
    out: dict[str, Any] = {
        "id": cert_id(base, vault, name, cv.version),
        "kid": f"{base}/keys/{display}/{cv.version}",
        "sid": f"{base}/secrets/{display}/{cv.version}",
        "x5t": x5t(cv.cert_der),
        "cer": base64.b64encode(cv.cert_der).decode(),
        "attributes": cv.attributes.to_json(),
        "policy": policy_json(base, vault, name, vault.policies.get(name.lower(), cv.policy)),
    }
    if cv.tags is not None:
        out["tags"] = cv.tags
    if cv.preserve_order:
        out["preserveCertOrder"] = True
    return out


def item(
    base: str, vault: Vault, name: str, cv: CertificateVersion, with_version: bool
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": cert_id(base, vault, name, cv.version if with_version else None),
        "x5t": x5t(cv.cert_der),
        "attributes": cv.attributes.to_json(),
    }
    if cv.tags is not None:
        out["tags"] = cv.tags
    return out


def _versions(ctx: KvContext, name: str) -> list[CertificateVersion]:
    versions = ctx.vault.certificates.get(name.lower())
    if not versions:
        raise not_found(KIND, name)
    return versions


def _check_name_free(ctx: KvContext, name: str) -> None:
    if name.lower() in ctx.vault.deleted_certificates:
        raise deleted_conflict(KIND, name)
    for kind, table in (("secrets", ctx.vault.secrets), ("keys", ctx.vault.keys)):
        existing = table.get(name.lower())
        if existing and not existing[-1].managed:
            raise KeyVaultError(
                409,
                "Conflict",
                f"There is already a {kind[:-1]} named {name} in this vault that is not "
                "managed by a certificate.",
            )


def load_material(value: str, password: str | None) -> tuple[CertMaterial, str]:
    """(material, the content type its format implies) from an import body's `value`: the
    base64 of a PFX or of a PEM bundle (what the SDKs send), or PEM text as is."""
    text = value.strip()
    if text.startswith("-----BEGIN"):
        return parse_pem_bundle(text), PEM_CONTENT_TYPE
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise MaterialError(
            "The specified certificate content is neither PEM nor base64-encoded PKCS#12."
        ) from None
    if data.lstrip().startswith(b"-----BEGIN"):
        try:
            return parse_pem_bundle(data.decode()), PEM_CONTENT_TYPE
        except UnicodeDecodeError:
            raise MaterialError("The specified PEM X.509 certificate content is invalid.") from None
    return parse_pfx(data, password), PFX_CONTENT_TYPE


# --- handlers -------------------------------------------------------------------------------


async def import_certificate(ctx: KvContext) -> web.StreamResponse:
    name = ctx.name()
    body = await ctx.body()
    value = body.get("value")
    if not isinstance(value, str) or not value:
        raise bad_parameter("Property 'value' is required.")
    pwd = body.get("pwd")
    if pwd is not None and not isinstance(pwd, str):
        raise bad_parameter("Property 'pwd' must be a string.")
    _check_name_free(ctx, name)
    try:
        material, implied = await asyncio.to_thread(load_material, value, pwd)
    except MaterialError as exc:
        raise bad_parameter(str(exc)) from None
    raw_policy = body.get("policy")
    content_type = implied
    if isinstance(raw_policy, dict):
        ct = (raw_policy.get("secret_props") or {}).get("contentType")
        if ct is not None:
            if ct not in CONTENT_TYPES:
                raise bad_parameter(f"The content type '{ct}' is not supported.")
            content_type = ct
    elif raw_policy is not None:
        raise bad_parameter("Property 'policy' must be an object.")
    policy = imported_policy(material, content_type, raw_policy)
    cv = add_version(
        ctx.vault,
        name,
        material,
        policy,
        parse_attributes(body.get("attributes")),
        parse_tags(body.get("tags")),
        bool(body.get("preserveCertOrder")),
    )
    ctx.changed()
    return json_ok(bundle(ctx.base, ctx.vault, name, cv))


def operation_json(
    base: str, vault: Vault, name: str, op: PendingOperation, status: str | None = None
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": f"{cert_id(base, vault, name)}/pending",
        "issuer": {"name": op.issuer},
        "cancellation_requested": False,
        "status": status or op.status,
        "request_id": op.request_id,
    }
    if op.csr_der:
        out["csr"] = base64.b64encode(op.csr_der).decode()
    if (status or op.status) == "completed":
        out["status_details"] = ""
        out["target"] = cert_id(base, vault, name)
    return out


async def create_certificate(ctx: KvContext) -> web.StreamResponse:
    name = ctx.name()
    body = await ctx.body()
    _check_name_free(ctx, name)
    policy = policy_from_request(body.get("policy"), ctx.vault.policies.get(name.lower()))
    issuer = str(policy.get("issuer", {}).get("name", "Self"))
    if issuer.lower() not in ("self", "unknown"):
        raise bad_parameter(f"The issuer '{issuer}' is not known to this vault.")
    try:
        material, csr = await asyncio.to_thread(generate, policy)
    except MaterialError as exc:
        raise bad_parameter(str(exc)) from None
    op = PendingOperation(new_version(), csr, issuer, "inProgress")
    if issuer.lower() == "self":
        add_version(
            ctx.vault,
            name,
            material,
            policy,
            parse_attributes(body.get("attributes")),
            parse_tags(body.get("tags")),
        )
        op.status = "completed"
    else:
        ctx.vault.policies[name.lower()] = policy
        ctx.vault.remember_name(KIND, name)
    ctx.vault.pending[name.lower()] = op
    ctx.changed()
    # Key Vault answers 202 inProgress; a self-signed one is complete by the first poll.
    return json_ok(operation_json(ctx.base, ctx.vault, name, op, "inProgress"), status=202)


async def get_pending(ctx: KvContext) -> web.StreamResponse:
    name = ctx.name()
    op = ctx.vault.pending.get(name.lower())
    if op is None:
        raise KeyVaultError(
            404, "PendingCertificateNotFound", f"Pending certificate not found: {name}"
        )
    return json_ok(operation_json(ctx.base, ctx.vault, name, op))


async def delete_pending(ctx: KvContext) -> web.StreamResponse:
    name = ctx.name()
    op = ctx.vault.pending.pop(name.lower(), None)
    if op is None:
        raise KeyVaultError(
            404, "PendingCertificateNotFound", f"Pending certificate not found: {name}"
        )
    ctx.changed()
    return json_ok(operation_json(ctx.base, ctx.vault, name, op))


async def get_certificate(ctx: KvContext) -> web.StreamResponse:
    name = ctx.name()
    cv = pick_version(ctx.vault.certificates.get(name.lower(), []), ctx.version(), KIND, name)
    return json_ok(bundle(ctx.base, ctx.vault, name, cv))


async def update_certificate(ctx: KvContext) -> web.StreamResponse:
    name = ctx.name()
    body = await ctx.body()
    cv = pick_version(ctx.vault.certificates.get(name.lower(), []), ctx.version(), KIND, name)
    raw = body.get("attributes")
    if isinstance(raw, dict) and "enabled" in raw:
        cv.attributes = parse_attributes({"enabled": raw["enabled"]}, cv.attributes)
    elif raw is not None:
        parse_attributes(raw)
    if "tags" in body:
        cv.tags = parse_tags(body["tags"])
    if body.get("policy") is not None:
        ctx.vault.policies[name.lower()] = policy_from_request(
            body["policy"], ctx.vault.policies.get(name.lower())
        )
    touch(cv.attributes)
    # The managed key and secret version follow the certificate's enabled flag.
    for table in (ctx.vault.keys, ctx.vault.secrets):
        for v in table.get(name.lower(), []):
            if v.version == cv.version:
                v.attributes.enabled = cv.attributes.enabled
                v.attributes.updated = cv.attributes.updated
    ctx.changed()
    return json_ok(bundle(ctx.base, ctx.vault, name, cv))


async def get_policy(ctx: KvContext) -> web.StreamResponse:
    name = ctx.name()
    policy = ctx.vault.policies.get(name.lower())
    if policy is None:
        raise not_found(KIND, name)
    return json_ok(policy_json(ctx.base, ctx.vault, name, policy))


async def update_policy(ctx: KvContext) -> web.StreamResponse:
    name = ctx.name()
    body = await ctx.body()
    existing = ctx.vault.policies.get(name.lower())
    if existing is None:
        raise not_found(KIND, name)
    policy = policy_from_request(body, existing)
    ctx.vault.policies[name.lower()] = policy
    ctx.changed()
    return json_ok(policy_json(ctx.base, ctx.vault, name, policy))


async def list_certificates(ctx: KvContext) -> web.StreamResponse:
    vault = ctx.vault
    items = [
        item(ctx.base, vault, n, vs[-1], with_version=False)
        for n, vs in sorted(vault.certificates.items())
        if vs
    ]
    return page(ctx, items)


async def list_versions(ctx: KvContext) -> web.StreamResponse:
    name = ctx.name()
    return page(ctx, [item(ctx.base, ctx.vault, name, v, True) for v in _versions(ctx, name)])


def _deleted_json(ctx: KvContext, name: str, d: Deleted, full: bool) -> dict[str, Any]:
    cv = d.versions[-1]
    body = (
        bundle(ctx.base, ctx.vault, name, cv)
        if full
        else item(ctx.base, ctx.vault, name, cv, False)
    )
    return {
        "recoveryId": f"{ctx.base}/deletedcertificates/{ctx.vault.display(KIND, name)}",
        "deletedDate": d.deleted_date,
        "scheduledPurgeDate": d.scheduled_purge_date,
        **body,
    }


async def delete_certificate(ctx: KvContext) -> web.StreamResponse:
    name = ctx.name()
    low = name.lower()
    versions = _versions(ctx, name)
    d = soft_deleted(
        versions,
        key_versions=ctx.vault.keys.pop(low, []),
        secret_versions=ctx.vault.secrets.pop(low, []),
    )
    del ctx.vault.certificates[low]
    ctx.vault.pending.pop(low, None)
    ctx.vault.deleted_certificates[low] = d
    body = _deleted_json(ctx, name, d, full=True)
    ctx.vault.policies.pop(low, None)
    ctx.changed()
    return json_ok(body)


def _deleted(ctx: KvContext, name: str) -> Deleted:
    return find_deleted(ctx.vault.deleted_certificates, "Certificate", name)


async def get_deleted(ctx: KvContext) -> web.StreamResponse:
    name = ctx.name()
    return json_ok(_deleted_json(ctx, name, _deleted(ctx, name), full=True))


async def list_deleted(ctx: KvContext) -> web.StreamResponse:
    return page(
        ctx,
        [
            _deleted_json(ctx, n, d, False)
            for n, d in sorted(ctx.vault.deleted_certificates.items())
        ],
    )


async def purge_deleted(ctx: KvContext) -> web.StreamResponse:
    return purge(ctx, ctx.vault.deleted_certificates, "Certificate")


async def recover_deleted(ctx: KvContext) -> web.StreamResponse:
    name = ctx.name()
    low = name.lower()
    d = _deleted(ctx, name)
    del ctx.vault.deleted_certificates[low]
    ctx.vault.certificates[low] = list(d.versions)
    ctx.vault.keys[low] = list(d.key_versions or [])
    ctx.vault.secrets[low] = list(d.secret_versions or [])
    ctx.vault.policies[low] = copy.deepcopy(d.versions[-1].policy)
    ctx.changed()
    return json_ok(bundle(ctx.base, ctx.vault, name, d.versions[-1]))


def register(router: Router[KvContext]) -> None:
    read = A + "read"
    router.add("GET", "/certificates", list_certificates, read)
    router.add("POST", "/certificates/{name}/import", import_certificate, A + "import/action", KIND)
    router.add("POST", "/certificates/{name}/create", create_certificate, A + "create/action", KIND)
    router.add("GET", "/certificates/{name}/pending", get_pending, read, KIND)
    router.add("DELETE", "/certificates/{name}/pending", delete_pending, A + "delete", KIND)
    router.add("GET", "/certificates/{name}/policy", get_policy, read, KIND)
    router.add("PATCH", "/certificates/{name}/policy", update_policy, A + "update/action", KIND)
    router.add("GET", "/certificates/{name}/versions", list_versions, read, KIND)
    router.add("GET", "/certificates/{name}/{version?}", get_certificate, read, KIND)
    router.add(
        "PATCH", "/certificates/{name}/{version?}", update_certificate, A + "update/action", KIND
    )
    router.add("DELETE", "/certificates/{name}", delete_certificate, A + "delete", KIND)
    router.add("GET", "/deletedcertificates", list_deleted, A + "deletedCertificates/read")
    router.add(
        "GET", "/deletedcertificates/{name}", get_deleted, A + "deletedCertificates/read", KIND
    )
    router.add("DELETE", "/deletedcertificates/{name}", purge_deleted, A + "purge/action", KIND)
    router.add(
        "POST", "/deletedcertificates/{name}/recover", recover_deleted, A + "recover/action", KIND
    )
