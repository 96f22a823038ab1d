"""What every Key Vault operation shares: the request context, challenge authentication,
names, versions, paging and JSON bodies."""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jwt
from aiohttp import web

from .errors import KeyVaultError, bad_parameter
from .services import Services
from .store import Attributes, Deleted, Identity, Store, Vault, now
from .tokens import KEY_VAULT_APP_ID, Caller, TokenAuthority

NAME_RE = re.compile(r"^[0-9a-zA-Z-]{1,127}$")
VERSION_RE = re.compile(r"^[0-9a-fA-F]{32}$")
MAX_PAGE = 25
RETENTION_SECONDS = 90 * 86400  # soft-delete retention, Key Vault's default


@dataclass
class KvContext:
    request: web.Request
    services: Services
    vault: Vault
    base: str  # "https://<vault host>"
    params: dict[str, str]
    caller: Caller
    identity: Identity | None

    @property
    def store(self) -> Store:
        return self.services.store

    def name(self, key: str = "name") -> str:
        name = self.params.get(key, "")
        if not NAME_RE.match(name):
            raise bad_parameter(f"The request URI contains an invalid name: {name}")
        return name

    def version(self) -> str:
        return self.params.get("version", "") or ""

    async def body(self) -> dict[str, Any]:
        raw = await self.request.read()
        if not raw.strip():
            raise bad_parameter("The request body is empty.")
        try:
            value = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            raise bad_parameter("The request body is not valid JSON.") from None
        if not isinstance(value, dict):
            raise bad_parameter("The request body must be a JSON object.")
        return value

    def changed(self) -> None:
        self.services.changed()


def parse_attributes(raw: Any, base: Attributes | None = None) -> Attributes:
    """Request `attributes` over `base` (or defaults); times are Unix seconds."""
    attrs = Attributes() if base is None else base
    if raw is None:
        return attrs
    if not isinstance(raw, dict):
        raise bad_parameter("Property 'attributes' must be an object.")
    if "enabled" in raw and raw["enabled"] is not None:
        if not isinstance(raw["enabled"], bool):
            raise bad_parameter("Property 'attributes.enabled' must be a boolean.")
        attrs.enabled = raw["enabled"]
    for field in ("nbf", "exp"):
        if field in raw:
            value = raw[field]
            if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
                raise bad_parameter(f"Property 'attributes.{field}' must be a Unix time.")
            setattr(attrs, field, value)
    return attrs


def parse_tags(raw: Any) -> dict[str, str] | None:
    if raw is None:
        return None
    if not isinstance(raw, dict) or not all(isinstance(v, str) for v in raw.values()):
        raise bad_parameter("Property 'tags' must be an object of strings.")
    if len(raw) > 15:
        raise bad_parameter("The number of tags exceeds the maximum of 15.")
    return {str(k): v for k, v in raw.items()}


def touch(attrs: Attributes) -> None:
    attrs.updated = now()


def page(ctx: KvContext, items: list[dict[str, Any]]) -> web.Response:
    """One page of a list, with `nextLink` carrying an opaque `$skiptoken` and `maxresults`."""
    q = ctx.request.query
    size = MAX_PAGE
    if "maxresults" in q:
        try:
            size = int(q["maxresults"])
        except ValueError:
            raise bad_parameter("The value of 'maxresults' is invalid.") from None
        if not 1 <= size <= MAX_PAGE:
            raise bad_parameter(f"The value of 'maxresults' must be between 1 and {MAX_PAGE}.")
    start = 0
    token = q.get("$skiptoken")
    if token:
        try:
            start = int(json.loads(base64.urlsafe_b64decode(token + "==="))["NextMarker"])
        except (ValueError, KeyError, TypeError):
            raise bad_parameter("The value of '$skiptoken' is invalid.") from None
    chunk = items[start : start + size]
    next_link = None
    if start + size < len(items):
        marker = (
            base64.urlsafe_b64encode(json.dumps({"NextMarker": str(start + size)}).encode())
            .decode()
            .rstrip("=")
        )
        api = q.get("api-version", "7.6")
        next_link = (
            f"{ctx.base}{ctx.request.path}?api-version={api}&$skiptoken={marker}&maxresults={size}"
        )
    return json_ok({"value": chunk, "nextLink": next_link})


def json_ok(body: Any, status: int = 200) -> web.Response:
    return web.Response(
        body=json.dumps(body, separators=(",", ":")).encode(),
        status=status,
        content_type="application/json",
        charset="utf-8",
    )


def not_found(kind: str, name: str, version: str = "") -> KeyVaultError:
    noun = {"secrets": "secret", "keys": "key", "certificates": "certificate"}[kind]
    code = {
        "secrets": "SecretNotFound",
        "keys": "KeyNotFound",
        "certificates": "CertificateNotFound",
    }[kind]
    ref = f"{name}/{version}" if version else name
    article = "An" if noun[0] in "aeiou" else "A"
    return KeyVaultError(
        404,
        code,
        f"{article} {noun} with (name/id) {ref} was not found in this key vault. If you recently "
        f"deleted this {noun} you may be able to recover it using the correct recovery command. "
        "For help resolving this issue, please see https://go.microsoft.com/fwlink/?linkid=2125182",
    )


def deleted_conflict(kind: str, name: str) -> KeyVaultError:
    noun = {"secrets": "Secret", "keys": "Key", "certificates": "Certificate"}[kind]
    return KeyVaultError(
        409,
        "Conflict",
        f"{noun} {name} is currently in a deleted but recoverable state, and its name cannot be "
        f"reused; in this state, the {noun.lower()} can only be recovered or purged.",
        "ObjectIsDeletedButRecoverable",
    )


def pick_version(versions: list[Any], version: str, kind: str, name: str) -> Any:
    """The newest version (by creation) when `version` is empty, else that exact version."""
    if not versions:
        raise not_found(kind, name, version)
    if not version:
        return versions[-1]
    low = version.lower()
    for v in versions:
        if v.version == low:
            return v
    raise not_found(kind, name, version)


# --- challenge authentication -------------------------------------------------------------


def challenge_headers(store: Store, vault: Vault, host: str) -> dict[str, str]:
    cloud = store.cloud_for_vault_host(host.split(":")[0])
    suffix = host.split(":")[0].split(".", 1)[1] if "." in host else "vault.azure.net"
    authority = cloud.authority_host if cloud else "login.microsoftonline.com"
    return {
        "WWW-Authenticate": (
            f'Bearer authorization="https://{authority}/{vault.tenant}", '
            f'resource="https://{suffix}"'
        )
    }


def unauthorized(store: Store, vault: Vault, host: str, message: str) -> KeyVaultError:
    return KeyVaultError(
        401, "Unauthorized", message, headers=challenge_headers(store, vault, host)
    )


def authenticate(
    store: Store, authority: TokenAuthority, vault: Vault, host: str, header: str | None
) -> Caller:
    """Verifies the bearer token for this vault: signature, expiry, audience and tenant."""
    if not header:
        raise unauthorized(
            store, vault, host, "AKV10000: Request is missing a Bearer or PoP token."
        )
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise unauthorized(
            store, vault, host, "AKV10000: Request is missing a Bearer or PoP token."
        )
    caller = authority.cached_caller(token)
    if caller is None:
        try:
            claims = authority.verify(token)
        except jwt.ExpiredSignatureError:
            raise unauthorized(store, vault, host, "Token has expired.") from None
        except jwt.InvalidSignatureError:
            raise unauthorized(store, vault, host, "Token signature validation failed.") from None
        except jwt.ImmatureSignatureError:
            raise unauthorized(store, vault, host, "Token is not yet valid.") from None
        except jwt.InvalidTokenError:
            raise unauthorized(
                store, vault, host, "Token is malformed and could not be validated."
            ) from None
        caller = Caller(
            client_id=str(claims.get("appid", "")),
            object_id=str(claims.get("oid", "")),
            tenant_id=str(claims.get("tid", "")),
            audience=str(claims.get("aud", "")),
            expires=int(claims["exp"]),
        )
        authority.remember(token, caller)
    suffix = host.split(":")[0].split(".", 1)[1] if "." in host else "vault.azure.net"
    resource = f"https://{suffix}"
    if caller.audience.rstrip("/").lower() not in (resource.lower(), KEY_VAULT_APP_ID):
        raise unauthorized(
            store,
            vault,
            host,
            f"AKV10022: Invalid audience. Expected {resource}, found: {caller.audience}.",
        )
    if caller.tenant_id.lower() != vault.tenant.lower():
        raise unauthorized(
            store,
            vault,
            host,
            f"AKV10032: Invalid issuer. Expected one of https://sts.windows.net/{vault.tenant}/, "
            f"found https://sts.windows.net/{caller.tenant_id}/.",
        )
    return caller


Handler = Callable[[KvContext], Any]


# --- soft delete, shared by secrets, keys and certificates --------------------------------


def soft_deleted(versions: list[Any], **carried: Any) -> Deleted:
    """A deleted object as Key Vault keeps it: its versions, the deletion date and the date it
    will be purged after the retention period."""
    t = now()
    return Deleted(
        versions=versions, deleted_date=t, scheduled_purge_date=t + RETENTION_SECONDS, **carried
    )


def find_deleted(deleted: dict[str, Deleted], label: str, name: str) -> Deleted:
    """The soft-deleted object `name`, or Key Vault's 404 (`label` is "Secret", "Key" or
    "Certificate")."""
    d = deleted.get(name.lower())
    if d is None:
        raise KeyVaultError(404, f"{label}NotFound", f"Deleted {label} not found: {name}")
    return d


def purge(ctx: KvContext, deleted: dict[str, Deleted], label: str) -> web.Response:
    name = ctx.name()
    find_deleted(deleted, label, name)
    del deleted[name.lower()]
    ctx.changed()
    return web.Response(status=204)
