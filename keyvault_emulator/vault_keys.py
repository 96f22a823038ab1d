# Over 400 lines: the key routes and the cryptographic operations share the key lookup.
"""Key Vault keys: create (RSA, EC), import a JWK, get (public JWK only), list, update, delete,
recover, purge, and the cryptographic operations (sign, verify, encrypt, decrypt, wrap, unwrap)."""

from __future__ import annotations

import asyncio
import base64
from typing import Any

from aiohttp import web
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils

from .errors import KeyVaultError, bad_parameter
from .material import EC_OPS, RSA_OPS, MaterialError, generate_key, private_key_from_jwk, public_jwk
from .routing import Router
from .store import Deleted, KeyVersion, PrivateKey, Vault, after, new_version, now
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

KIND = "keys"
A = "Microsoft.KeyVault/vaults/keys/"
KEY_OPS = {"encrypt", "decrypt", "sign", "verify", "wrapKey", "unwrapKey", "import", "export"}
KTYS = {"RSA", "RSA-HSM", "EC", "EC-HSM"}


def key_id(base: str, vault: Vault, name: str, version: str | None = None) -> str:
    url = f"{base}/keys/{vault.display(KIND, name)}"
    return f"{url}/{version}" if version else url


def _attrs(v: KeyVersion) -> dict[str, Any]:
    return v.attributes.to_json({"exportable": False})


def bundle(base: str, vault: Vault, name: str, v: KeyVersion) -> dict[str, Any]:
    out: dict[str, Any] = {
        "key": public_jwk(v.key, key_id(base, vault, name, v.version), v.kty, v.key_ops),
        "attributes": _attrs(v),
    }
    if v.tags is not None:
        out["tags"] = v.tags
    if v.managed:
        out["managed"] = True
    return out


def item(base: str, vault: Vault, name: str, v: KeyVersion, with_version: bool) -> dict[str, Any]:
    out: dict[str, Any] = {
        "kid": key_id(base, vault, name, v.version if with_version else None),
        "attributes": _attrs(v),
    }
    if v.tags is not None:
        out["tags"] = v.tags
    if v.managed:
        out["managed"] = True
    return out


def deleted_bundle(base: str, vault: Vault, name: str, d: Deleted, full: bool) -> dict[str, Any]:
    v = d.versions[-1]
    body = bundle(base, vault, name, v) if full else item(base, vault, name, v, False)
    return {
        "recoveryId": f"{base}/deletedkeys/{vault.display(KIND, name)}",
        "deletedDate": d.deleted_date,
        "scheduledPurgeDate": d.scheduled_purge_date,
        **body,
    }


def add_version(vault: Vault, name: str, version: KeyVersion) -> None:
    vault.remember_name(KIND, name)
    versions = vault.keys.setdefault(name.lower(), [])
    after(versions, version.attributes)
    versions.append(version)


def _key_ops(raw: Any, default: list[str]) -> list[str]:
    if raw is None:
        return list(default)
    if not isinstance(raw, list) or not all(isinstance(o, str) and o in KEY_OPS for o in raw):
        raise bad_parameter(f"Invalid key_ops: {raw}")
    return list(raw)


def _check_name_free(ctx: KvContext, name: str) -> None:
    if name.lower() in ctx.vault.deleted_keys:
        raise deleted_conflict(KIND, name)
    existing = ctx.vault.keys.get(name.lower())
    if existing and existing[-1].managed:
        raise KeyVaultError(409, "Conflict", f"Key {name} is managed by a certificate.")


async def create_key(ctx: KvContext) -> web.StreamResponse:
    name = ctx.name()
    body = await ctx.body()
    kty = body.get("kty")
    if kty not in KTYS:
        raise bad_parameter(f"The value of 'kty' is invalid: {kty}")
    size = body.get("key_size")
    crv = body.get("crv")
    exponent = body.get("public_exponent")
    if size is not None and not isinstance(size, int):
        raise bad_parameter("Property 'key_size' must be an integer.")
    _check_name_free(ctx, name)
    try:
        key = await asyncio.to_thread(generate_key, kty, size, crv, exponent)
    except MaterialError as exc:
        raise bad_parameter(str(exc)) from None
    default_ops = RSA_OPS if kty.startswith("RSA") else EC_OPS
    v = KeyVersion(
        version=new_version(),
        key=key,
        kty=kty,
        key_ops=_key_ops(body.get("key_ops"), default_ops),
        attributes=parse_attributes(body.get("attributes")),
        tags=parse_tags(body.get("tags")),
    )
    add_version(ctx.vault, name, v)
    ctx.changed()
    return json_ok(bundle(ctx.base, ctx.vault, name, v))


async def import_key(ctx: KvContext) -> web.StreamResponse:
    name = ctx.name()
    body = await ctx.body()
    jwk = body.get("key")
    if not isinstance(jwk, dict):
        raise bad_parameter("Property 'key' is required and must be a JSON Web Key.")
    kty = str(jwk.get("kty", ""))
    if kty not in KTYS:
        raise bad_parameter(f"The value of 'kty' is invalid: {kty}")
    _check_name_free(ctx, name)
    try:
        key = private_key_from_jwk(jwk)
    except MaterialError as exc:
        raise bad_parameter(str(exc)) from None
    if body.get("Hsm") or body.get("hsm"):
        kty = kty if kty.endswith("-HSM") else kty + "-HSM"
    default_ops = RSA_OPS if kty.startswith("RSA") else EC_OPS
    v = KeyVersion(
        version=new_version(),
        key=key,
        kty=kty,
        key_ops=_key_ops(jwk.get("key_ops"), default_ops),
        attributes=parse_attributes(body.get("attributes")),
        tags=parse_tags(body.get("tags")),
    )
    add_version(ctx.vault, name, v)
    ctx.changed()
    return json_ok(bundle(ctx.base, ctx.vault, name, v))


def _versions(ctx: KvContext, name: str) -> list[KeyVersion]:
    versions = ctx.vault.keys.get(name.lower())
    if not versions:
        raise not_found(KIND, name)
    return versions


async def get_key(ctx: KvContext) -> web.StreamResponse:
    name = ctx.name()
    v = pick_version(ctx.vault.keys.get(name.lower(), []), ctx.version(), KIND, name)
    return json_ok(bundle(ctx.base, ctx.vault, name, v))


async def update_key(ctx: KvContext) -> web.StreamResponse:
    name = ctx.name()
    body = await ctx.body()
    v = pick_version(ctx.vault.keys.get(name.lower(), []), ctx.version(), KIND, name)
    if "key_ops" in body and body["key_ops"] is not None:
        v.key_ops = _key_ops(body["key_ops"], v.key_ops)
    v.attributes = parse_attributes(body.get("attributes"), v.attributes)
    if "tags" in body:
        v.tags = parse_tags(body["tags"])
    touch(v.attributes)
    ctx.changed()
    return json_ok(bundle(ctx.base, ctx.vault, name, v))


async def list_keys(ctx: KvContext) -> web.StreamResponse:
    vault = ctx.vault
    items = [
        item(ctx.base, vault, n, vs[-1], with_version=False)
        for n, vs in sorted(vault.keys.items())
        if vs
    ]
    return page(ctx, items)


async def list_versions(ctx: KvContext) -> web.StreamResponse:
    name = ctx.name()
    return page(ctx, [item(ctx.base, ctx.vault, name, v, True) for v in _versions(ctx, name)])


async def delete_key(ctx: KvContext) -> web.StreamResponse:
    name = ctx.name()
    versions = _versions(ctx, name)
    if versions[-1].managed:
        raise KeyVaultError(
            403, "Forbidden", f"Key {name} is managed by a certificate and cannot be deleted."
        )
    del ctx.vault.keys[name.lower()]
    d = soft_deleted(versions)
    ctx.vault.deleted_keys[name.lower()] = d
    ctx.changed()
    return json_ok(deleted_bundle(ctx.base, ctx.vault, name, d, full=True))


def _deleted(ctx: KvContext, name: str) -> Deleted:
    return find_deleted(ctx.vault.deleted_keys, "Key", name)


async def get_deleted(ctx: KvContext) -> web.StreamResponse:
    name = ctx.name()
    return json_ok(deleted_bundle(ctx.base, ctx.vault, name, _deleted(ctx, name), full=True))


async def list_deleted(ctx: KvContext) -> web.StreamResponse:
    items = [
        deleted_bundle(ctx.base, ctx.vault, n, d, full=False)
        for n, d in sorted(ctx.vault.deleted_keys.items())
    ]
    return page(ctx, items)


async def purge_deleted(ctx: KvContext) -> web.StreamResponse:
    return purge(ctx, ctx.vault.deleted_keys, "Key")


async def recover_deleted(ctx: KvContext) -> web.StreamResponse:
    name = ctx.name()
    d = _deleted(ctx, name)
    del ctx.vault.deleted_keys[name.lower()]
    ctx.vault.keys[name.lower()] = list(d.versions)
    ctx.changed()
    return json_ok(bundle(ctx.base, ctx.vault, name, d.versions[-1]))


# --- cryptographic operations ---------------------------------------------------------------

_HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "256": hashes.SHA256,
    "384": hashes.SHA384,
    "512": hashes.SHA512,
}


def _b64(value: Any, field: str) -> bytes:
    if not isinstance(value, str):
        raise bad_parameter(f"Property '{field}' is required.")
    try:
        return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    except ValueError:
        raise bad_parameter(f"Property '{field}' must be base64url.") from None


def _out(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


PRIVATE_OPS = {"decrypt", "sign", "unwrapKey"}


def _usable(ctx: KvContext, op: str) -> tuple[str, KeyVersion]:
    """The key version for `op`. A disabled (or expired, not yet valid) key refuses the
    private-key operations only; encrypt, verify and wrap still work, as in Key Vault."""
    name = ctx.name()
    v = pick_version(ctx.vault.keys.get(name.lower(), []), ctx.version(), KIND, name)
    if op in PRIVATE_OPS:
        if not v.attributes.enabled:
            raise KeyVaultError(
                403, "Forbidden", f"Operation {op} is not allowed on a disabled key.", "KeyDisabled"
            )
        t = now()
        if (v.attributes.nbf and t < v.attributes.nbf) or (
            v.attributes.exp and t > v.attributes.exp
        ):
            raise KeyVaultError(
                403,
                "Forbidden",
                f"Operation {op} is not allowed on an expired or not yet valid key.",
            )
    if op not in v.key_ops:
        raise KeyVaultError(403, "Forbidden", f"Operation {op} is not permitted for this key.")
    return name, v


def _rsa_padding(alg: str) -> padding.AsymmetricPadding:
    if alg == "RSA-OAEP":
        # Key Vault's RSA-OAEP is OAEP with SHA-1 (RSA-OAEP-256 is the SHA-256 one).
        sha1 = hashes.SHA1()  # noqa: S303
        return padding.OAEP(mgf=padding.MGF1(sha1), algorithm=sha1, label=None)
    if alg == "RSA-OAEP-256":
        return padding.OAEP(
            mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None
        )
    if alg == "RSA1_5":
        return padding.PKCS1v15()
    raise bad_parameter(f"Invalid algorithm: {alg}")


def _sign_params(key: PrivateKey, alg: str) -> tuple[type[hashes.HashAlgorithm], str]:
    family, bits = alg[:2], alg[2:].removesuffix("K")
    if bits not in _HASHES or (isinstance(key, rsa.RSAPrivateKey) != (family in ("RS", "PS"))):
        raise bad_parameter(f"Invalid algorithm: {alg}")
    if family not in ("RS", "PS", "ES"):
        raise bad_parameter(f"Invalid algorithm: {alg}")
    return _HASHES[bits], family


def _crypt(op: str, encrypt: bool) -> Any:
    async def handler(ctx: KvContext) -> web.StreamResponse:
        body = await ctx.body()
        name, v = _usable(ctx, op)
        if not isinstance(v.key, rsa.RSAPrivateKey):
            raise bad_parameter(f"Operation {op} requires an RSA key.")
        alg = str(body.get("alg", ""))
        data = _b64(body.get("value"), "value")
        pad = _rsa_padding(alg)
        try:
            result = v.key.public_key().encrypt(data, pad) if encrypt else v.key.decrypt(data, pad)
        except ValueError:
            raise bad_parameter("The data could not be processed with this key.") from None
        return json_ok(
            {"kid": key_id(ctx.base, ctx.vault, name, v.version), "value": _out(result), "alg": alg}
        )

    return handler


async def sign(ctx: KvContext) -> web.StreamResponse:
    body = await ctx.body()
    name, v = _usable(ctx, "sign")
    alg = str(body.get("alg", ""))
    digest = _b64(body.get("value"), "value")
    hash_cls, family = _sign_params(v.key, alg)
    prehashed = utils.Prehashed(hash_cls())
    if len(digest) != hash_cls().digest_size:
        raise bad_parameter("The digest length does not match the algorithm.")
    if isinstance(v.key, rsa.RSAPrivateKey):
        pad: padding.AsymmetricPadding = (
            padding.PKCS1v15()
            if family == "RS"
            else padding.PSS(mgf=padding.MGF1(hash_cls()), salt_length=hash_cls().digest_size)
        )
        sig = v.key.sign(digest, pad, prehashed)
    else:
        der = v.key.sign(digest, ec.ECDSA(prehashed))
        r, s = utils.decode_dss_signature(der)
        size = (v.key.curve.key_size + 7) // 8
        sig = r.to_bytes(size, "big") + s.to_bytes(size, "big")
    return json_ok({"kid": key_id(ctx.base, ctx.vault, name, v.version), "value": _out(sig)})


async def verify(ctx: KvContext) -> web.StreamResponse:
    body = await ctx.body()
    _, v = _usable(ctx, "verify")
    alg = str(body.get("alg", ""))
    digest = _b64(body.get("digest"), "digest")
    sig = _b64(body.get("value"), "value")
    hash_cls, family = _sign_params(v.key, alg)
    prehashed = utils.Prehashed(hash_cls())
    try:
        if isinstance(v.key, rsa.RSAPrivateKey):
            pad: padding.AsymmetricPadding = (
                padding.PKCS1v15()
                if family == "RS"
                else padding.PSS(mgf=padding.MGF1(hash_cls()), salt_length=hash_cls().digest_size)
            )
            v.key.public_key().verify(sig, digest, pad, prehashed)
        else:
            half = len(sig) // 2
            der = utils.encode_dss_signature(
                int.from_bytes(sig[:half], "big"), int.from_bytes(sig[half:], "big")
            )
            v.key.public_key().verify(der, digest, ec.ECDSA(prehashed))
        ok = True
    except (InvalidSignature, ValueError):
        ok = False
    return json_ok({"value": ok})


def register(router: Router[KvContext]) -> None:
    router.add("GET", "/keys", list_keys, A + "read")
    router.add("POST", "/keys/{name}/create", create_key, A + "create/action", KIND)
    router.add("PUT", "/keys/{name}", import_key, A + "import/action", KIND)
    router.add("GET", "/keys/{name}/versions", list_versions, A + "read", KIND)
    router.add("POST", "/keys/{name}/{version}/sign", sign, A + "sign/action", KIND)
    router.add("POST", "/keys/{name}/{version}/verify", verify, A + "verify/action", KIND)
    router.add(
        "POST",
        "/keys/{name}/{version}/encrypt",
        _crypt("encrypt", True),
        A + "encrypt/action",
        KIND,
    )
    router.add(
        "POST",
        "/keys/{name}/{version}/decrypt",
        _crypt("decrypt", False),
        A + "decrypt/action",
        KIND,
    )
    router.add(
        "POST", "/keys/{name}/{version}/wrapkey", _crypt("wrapKey", True), A + "wrap/action", KIND
    )
    router.add(
        "POST",
        "/keys/{name}/{version}/unwrapkey",
        _crypt("unwrapKey", False),
        A + "unwrap/action",
        KIND,
    )
    router.add("GET", "/keys/{name}/{version?}", get_key, A + "read", KIND)
    router.add("PATCH", "/keys/{name}/{version?}", update_key, A + "update/action", KIND)
    router.add("DELETE", "/keys/{name}", delete_key, A + "delete", KIND)
    router.add("GET", "/deletedkeys", list_deleted, A + "deletedKeys/read")
    router.add("GET", "/deletedkeys/{name}", get_deleted, A + "deletedKeys/read", KIND)
    router.add("DELETE", "/deletedkeys/{name}", purge_deleted, A + "purge/action", KIND)
    router.add("POST", "/deletedkeys/{name}/recover", recover_deleted, A + "recover/action", KIND)
