"""Key Vault secrets: set, get, list, update, delete, recover, purge."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from .errors import KeyVaultError, bad_parameter
from .routing import Router
from .store import Deleted, SecretVersion, Vault, after, new_version
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

KIND = "secrets"
A = "Microsoft.KeyVault/vaults/secrets/"
MAX_VALUE = 25 * 1024


def secret_id(base: str, vault: Vault, name: str, version: str | None = None) -> str:
    url = f"{base}/secrets/{vault.display(KIND, name)}"
    return f"{url}/{version}" if version else url


def bundle(
    base: str, vault: Vault, name: str, v: SecretVersion, value: bool = True
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if value:
        out["value"] = v.value
    out["id"] = secret_id(base, vault, name, v.version)
    if v.content_type is not None:
        out["contentType"] = v.content_type
    out["attributes"] = v.attributes.to_json()
    if v.tags is not None:
        out["tags"] = v.tags
    if v.managed:
        out["managed"] = True
        if v.key_version:
            out["kid"] = f"{base}/keys/{vault.display('keys', name)}/{v.key_version}"
    return out


def item(
    base: str, vault: Vault, name: str, v: SecretVersion, with_version: bool
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": secret_id(base, vault, name, v.version if with_version else None),
        "attributes": v.attributes.to_json(),
    }
    if v.tags is not None:
        out["tags"] = v.tags
    if v.content_type is not None:
        out["contentType"] = v.content_type
    if v.managed:
        out["managed"] = True
    return out


def deleted_bundle(base: str, vault: Vault, name: str, d: Deleted) -> dict[str, Any]:
    out = bundle(base, vault, name, d.versions[-1], value=False)
    out = {
        "recoveryId": f"{base}/deletedsecrets/{vault.display(KIND, name)}",
        "deletedDate": d.deleted_date,
        "scheduledPurgeDate": d.scheduled_purge_date,
        **out,
    }
    return out


def add_version(vault: Vault, name: str, version: SecretVersion) -> None:
    vault.remember_name(KIND, name)
    versions = vault.secrets.setdefault(name.lower(), [])
    after(versions, version.attributes)
    versions.append(version)


def _get_versions(vault: Vault, name: str) -> list[SecretVersion]:
    versions = vault.secrets.get(name.lower())
    if not versions:
        raise not_found(KIND, name)
    return versions


def secret_fields(body: dict[str, Any]) -> tuple[str, str | None]:
    """A new version's value and content type, with Key Vault's checks (a string of at most
    25 KB): the data plane's set and the admin API's set both take them from here."""
    value = body.get("value")
    if not isinstance(value, str):
        raise bad_parameter("Property 'value' is required and must be a string.")
    if len(value.encode()) > MAX_VALUE:
        raise bad_parameter("Secret value exceeds the maximum size of 25 KB.")
    content_type = body.get("contentType")
    if content_type is not None and not isinstance(content_type, str):
        raise bad_parameter("Property 'contentType' must be a string.")
    return value, content_type


async def set_secret(ctx: KvContext) -> web.StreamResponse:
    name = ctx.name()
    body = await ctx.body()
    value, content_type = secret_fields(body)
    if name.lower() in ctx.vault.deleted_secrets:
        raise deleted_conflict(KIND, name)
    existing = ctx.vault.secrets.get(name.lower())
    if existing and existing[-1].managed:
        raise KeyVaultError(
            409, "Conflict", f"Secret {name} is managed by a certificate and cannot be set."
        )
    v = SecretVersion(
        version=new_version(),
        value=value,
        content_type=content_type,
        attributes=parse_attributes(body.get("attributes")),
        tags=parse_tags(body.get("tags")),
    )
    add_version(ctx.vault, name, v)
    ctx.changed()
    return json_ok(bundle(ctx.base, ctx.vault, name, v))


async def get_secret(ctx: KvContext) -> web.StreamResponse:
    name = ctx.name()
    version = ctx.version()
    v = pick_version(ctx.vault.secrets.get(name.lower(), []), version, KIND, name)
    if not v.attributes.enabled:
        raise KeyVaultError(
            403, "Forbidden", "Operation get is not allowed on a disabled secret.", "SecretDisabled"
        )
    return json_ok(bundle(ctx.base, ctx.vault, name, v))


async def update_secret(ctx: KvContext) -> web.StreamResponse:
    name = ctx.name()
    body = await ctx.body()
    v = pick_version(ctx.vault.secrets.get(name.lower(), []), ctx.version(), KIND, name)
    if "contentType" in body:
        ct = body["contentType"]
        if ct is not None and not isinstance(ct, str):
            raise bad_parameter("Property 'contentType' must be a string.")
        if not v.managed:
            v.content_type = ct
    v.attributes = parse_attributes(body.get("attributes"), v.attributes)
    if "tags" in body:
        v.tags = parse_tags(body["tags"])
    touch(v.attributes)
    ctx.changed()
    return json_ok(bundle(ctx.base, ctx.vault, name, v, value=False))


async def list_secrets(ctx: KvContext) -> web.StreamResponse:
    vault = ctx.vault
    items = [
        item(ctx.base, vault, n, versions[-1], with_version=False)
        for n, versions in sorted(vault.secrets.items())
        if versions
    ]
    return page(ctx, items)


async def list_versions(ctx: KvContext) -> web.StreamResponse:
    name = ctx.name()
    versions = _get_versions(ctx.vault, name)
    return page(ctx, [item(ctx.base, ctx.vault, name, v, with_version=True) for v in versions])


async def delete_secret(ctx: KvContext) -> web.StreamResponse:
    name = ctx.name()
    versions = _get_versions(ctx.vault, name)
    if versions[-1].managed:
        raise KeyVaultError(
            403, "Forbidden", f"Secret {name} is managed by a certificate and cannot be deleted."
        )
    del ctx.vault.secrets[name.lower()]
    d = soft_deleted(versions)
    ctx.vault.deleted_secrets[name.lower()] = d
    ctx.changed()
    return json_ok(deleted_bundle(ctx.base, ctx.vault, name, d))


def _deleted(ctx: KvContext, name: str) -> Deleted:
    return find_deleted(ctx.vault.deleted_secrets, "Secret", name)


async def get_deleted(ctx: KvContext) -> web.StreamResponse:
    name = ctx.name()
    return json_ok(deleted_bundle(ctx.base, ctx.vault, name, _deleted(ctx, name)))


async def list_deleted(ctx: KvContext) -> web.StreamResponse:
    vault = ctx.vault
    items = []
    for n, d in sorted(vault.deleted_secrets.items()):
        entry = item(ctx.base, vault, n, d.versions[-1], with_version=False)
        items.append(
            {
                "recoveryId": f"{ctx.base}/deletedsecrets/{vault.display(KIND, n)}",
                "deletedDate": d.deleted_date,
                "scheduledPurgeDate": d.scheduled_purge_date,
                **entry,
            }
        )
    return page(ctx, items)


async def purge_deleted(ctx: KvContext) -> web.StreamResponse:
    return purge(ctx, ctx.vault.deleted_secrets, "Secret")


async def recover_deleted(ctx: KvContext) -> web.StreamResponse:
    name = ctx.name()
    d = _deleted(ctx, name)
    del ctx.vault.deleted_secrets[name.lower()]
    ctx.vault.secrets[name.lower()] = list(d.versions)
    ctx.changed()
    return json_ok(bundle(ctx.base, ctx.vault, name, d.versions[-1], value=False))


def register(router: Router[KvContext]) -> None:
    router.add("GET", "/secrets", list_secrets, A + "readMetadata/action")
    router.add("PUT", "/secrets/{name}", set_secret, A + "setSecret/action", KIND)
    router.add("GET", "/secrets/{name}/versions", list_versions, A + "readMetadata/action", KIND)
    router.add("GET", "/secrets/{name}/{version?}", get_secret, A + "getSecret/action", KIND)
    router.add("PATCH", "/secrets/{name}/{version?}", update_secret, A + "update/action", KIND)
    router.add("DELETE", "/secrets/{name}", delete_secret, A + "delete", KIND)
    router.add("GET", "/deletedsecrets", list_deleted, A + "deletedSecrets/read")
    router.add("GET", "/deletedsecrets/{name}", get_deleted, A + "deletedSecrets/read", KIND)
    router.add("DELETE", "/deletedsecrets/{name}", purge_deleted, A + "purge/action", KIND)
    router.add(
        "POST", "/deletedsecrets/{name}/recover", recover_deleted, A + "recover/action", KIND
    )
