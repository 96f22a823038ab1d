# Over 400 lines: one parser per seed section, all of a single file format.
"""Seeding: tenants, clouds, identities, issuers, vaults with role assignments and versioned
objects, from YAML or JSON (a file at start, or the admin API later; seeds merge)."""

from __future__ import annotations

import base64
import datetime
import json
import uuid
from pathlib import Path
from typing import Any

import yaml

from . import cert_policy, vault_certificates, vault_keys, vault_secrets
from .authz import canonical_role
from .material import (
    EC_OPS,
    PEM_CONTENT_TYPE,
    PFX_CONTENT_TYPE,
    RSA_OPS,
    MaterialError,
    generate_key,
    key_kty,
    load_private_key_pem,
    parse_pem_bundle,
    parse_pfx,
    private_key_from_jwk,
)
from .store import (
    Attributes,
    Cloud,
    FederatedCredential,
    Identity,
    Issuer,
    KeyVersion,
    RoleAssignment,
    SecretVersion,
    Store,
    Vault,
    new_version,
    now,
)
from .vault_common import NAME_RE

IDENTITY_TYPES = {
    "serviceprincipal": "servicePrincipal",
    "application": "servicePrincipal",
    "app": "servicePrincipal",
    "systemassigned": "systemAssigned",
    "system": "systemAssigned",
    "userassigned": "userAssigned",
    "user": "userAssigned",
}
TOKEN_EXCHANGE_AUDIENCE = "api://AzureADTokenExchange"


class SeedError(ValueError):
    """A seed that cannot be applied; the message names the entry and the rule."""


def load_text(text: str) -> dict[str, Any]:
    try:
        data = yaml.safe_load(text) if text.strip() else {}
    except yaml.YAMLError as exc:
        raise SeedError(f"seed is not valid YAML or JSON: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise SeedError("a seed is a mapping (tenants, identities, issuers, vaults, ...)")
    return data


def load_file(path: Path) -> dict[str, Any]:
    return load_text(path.read_text())


def _list(data: dict[str, Any], key: str, where: str) -> list[Any]:
    value = data.get(key) or []
    if not isinstance(value, list):
        raise SeedError(f"{where}{key}: must be a list")
    return value


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _time(value: Any, where: str) -> int | None:
    """Unix seconds, an ISO 8601 date, or relative to now: "+1h", "-30d" (s, m, h, d)."""
    if value is None:
        return None
    text = str(value).strip()
    if text[:1] in "+-" and text[1:-1].isdigit() and text[-1:] in _UNITS:
        sign = 1 if text[0] == "+" else -1
        return now() + sign * int(text[1:-1]) * _UNITS[text[-1]]
    if isinstance(value, bool):
        raise SeedError(f"{where}: a time is Unix seconds, an ISO 8601 date or +/-N[smhd]")
    if isinstance(value, int):
        return value
    if isinstance(value, datetime.datetime):
        dt = value if value.tzinfo else value.replace(tzinfo=datetime.UTC)
        return int(dt.timestamp())
    if isinstance(value, datetime.date):
        return int(
            datetime.datetime(value.year, value.month, value.day, tzinfo=datetime.UTC).timestamp()
        )
    try:
        dt = datetime.datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        raise SeedError(f"{where}: a time is Unix seconds or an ISO 8601 date") from None
    return int((dt if dt.tzinfo else dt.replace(tzinfo=datetime.UTC)).timestamp())


def _attrs(spec: dict[str, Any], where: str) -> Attributes:
    return Attributes(
        enabled=bool(spec.get("enabled", True)),
        nbf=_time(spec.get("nbf"), where + ".nbf"),
        exp=_time(spec.get("exp"), where + ".exp"),
    )


def _tags(spec: dict[str, Any], where: str) -> dict[str, str] | None:
    tags = spec.get("tags")
    if tags is None:
        return None
    if not isinstance(tags, dict):
        raise SeedError(f"{where}.tags: must be a mapping")
    return {str(k): str(v) for k, v in tags.items()}


def _version(spec: dict[str, Any], where: str) -> str:
    version = spec.get("version")
    if version is None:
        return new_version()
    version = str(version).lower()
    if len(version) != 32 or any(c not in "0123456789abcdef" for c in version):
        raise SeedError(f"{where}.version: must be 32 hex characters")
    return version


def _read(spec: dict[str, Any], key: str, base: Path | None) -> str | None:
    if spec.get(key) is not None:
        return str(spec[key])
    file_key = key + "File"
    if spec.get(file_key):
        path = Path(str(spec[file_key]))
        if not path.is_absolute() and base is not None:
            path = base / path
        return path.read_text()
    return None


def _versions(spec: dict[str, Any]) -> list[dict[str, Any]]:
    versions = spec.get("versions")
    if versions is None:
        return [spec]
    if not isinstance(versions, list) or not versions:
        raise SeedError(f"{spec.get('name')}: versions must be a non-empty list")
    return [
        {**{k: v for k, v in spec.items() if k not in ("versions", "name")}, **v} for v in versions
    ]


def apply(store: Store, data: dict[str, Any], base: Path | None = None) -> dict[str, int]:
    """Merges a seed into the store; returns what it added, by kind."""
    added = {"tenants": 0, "identities": 0, "issuers": 0, "vaults": 0, "objects": 0}
    if "tokenLifetimeSeconds" in data:
        store.token_lifetime = int(data["tokenLifetimeSeconds"])
    for i, t in enumerate(_list(data, "tenants", "")):
        spec = {"id": t} if isinstance(t, str) else t
        if not isinstance(spec, dict) or not spec.get("id"):
            raise SeedError(f"tenants[{i}]: needs an id")
        tid = str(spec["id"])
        store.tenants[tid] = [str(d) for d in spec.get("domains") or []]
        if spec.get("default") or store.default_tenant is None:
            store.default_tenant = tid
        added["tenants"] += 1
    for i, c in enumerate(_list(data, "clouds", "")):
        where = f"clouds[{i}]"
        if not isinstance(c, dict) or not c.get("vaultSuffix") or not c.get("authority"):
            raise SeedError(f"{where}: needs vaultSuffix and authority")
        host = str(c["authority"]).removeprefix("https://").rstrip("/").lower()
        suffix = str(c["vaultSuffix"]).lstrip(".").lower()
        store.clouds = [x for x in store.clouds if x.vault_suffix != suffix] + [Cloud(suffix, host)]
    for i, spec in enumerate(_list(data, "issuers", "")):
        store_issuer(store, spec, f"issuers[{i}]", base)
        added["issuers"] += 1
    for i, spec in enumerate(_list(data, "identities", "")):
        _identity(store, spec, f"identities[{i}]", base)
        added["identities"] += 1
    for i, spec in enumerate(_list(data, "vaults", "")):
        added["objects"] += _vault(store, spec, f"vaults[{i}]", base)
        added["vaults"] += 1
    return added


def store_issuer(store: Store, spec: Any, where: str, base: Path | None) -> Issuer:
    if not isinstance(spec, dict) or not spec.get("issuer"):
        raise SeedError(f"{where}: needs an issuer URL")
    jwks = spec.get("jwks")
    if isinstance(jwks, str):
        jwks = json.loads(jwks)
    if jwks is None and spec.get("jwksFile"):
        text = _read(spec, "jwks", base)
        jwks = json.loads(text or "{}")
    if jwks is not None and (not isinstance(jwks, dict) or "keys" not in jwks):
        raise SeedError(f"{where}.jwks: must be a JWKS ({{'keys': [...]}})")
    ca_file = spec.get("caFile")
    if ca_file and base is not None and not Path(ca_file).is_absolute():
        ca_file = str(base / ca_file)
    issuer = Issuer(
        issuer=str(spec["issuer"]),
        jwks=jwks,
        jwks_uri=spec.get("jwksUri"),
        ca_file=ca_file,
        bearer_token_file=spec.get("bearerTokenFile"),
    )
    store.issuers[issuer.issuer] = issuer
    return issuer


def _identity(store: Store, spec: Any, where: str, base: Path | None) -> None:
    if not isinstance(spec, dict) or not spec.get("name"):
        raise SeedError(f"{where}: needs a name")
    kind = IDENTITY_TYPES.get(str(spec.get("type", "servicePrincipal")).replace("-", "").lower())
    if kind is None:
        raise SeedError(
            f"{where}.type: one of servicePrincipal, application, systemAssigned, userAssigned"
        )
    tenant = spec.get("tenant") or store.default_tenant
    if tenant is None:
        raise SeedError(f"{where}: no tenant (declare tenants first)")
    tid = store.resolve_tenant(str(tenant))
    if tid is None:
        raise SeedError(f"{where}.tenant: unknown tenant {tenant}")
    secrets = [str(s) for s in spec.get("clientSecrets") or []]
    if spec.get("clientSecret"):
        secrets.insert(0, str(spec["clientSecret"]))
    creds = []
    for j, fc in enumerate(spec.get("federatedCredentials") or []):
        fwhere = f"{where}.federatedCredentials[{j}]"
        if not isinstance(fc, dict) or not fc.get("issuer") or not fc.get("subject"):
            raise SeedError(f"{fwhere}: needs issuer and subject")
        audiences = fc.get("audiences") or [fc.get("audience") or TOKEN_EXCHANGE_AUDIENCE]
        creds.append(
            FederatedCredential(
                str(fc["issuer"]),
                str(fc["subject"]),
                [str(a) for a in audiences],
                str(fc.get("name", "")),
            )
        )
        if any(k in fc for k in ("jwks", "jwksUri", "jwksFile")):
            store_issuer(store, {**fc}, fwhere, base)
    name = str(spec["name"])
    resource_id = spec.get("resourceId")
    if kind == "userAssigned" and not resource_id:
        resource_id = (
            "/subscriptions/00000000-0000-0000-0000-000000000000/resourcegroups/emulator/"
            f"providers/Microsoft.ManagedIdentity/userAssignedIdentities/{name}"
        )
    ident = Identity(
        name=name,
        kind=kind,
        client_id=str(spec.get("clientId") or uuid.uuid4()),
        object_id=str(spec.get("objectId") or uuid.uuid4()),
        tenant=tid,
        client_secrets=secrets,
        federated_credentials=creds,
        resource_id=str(resource_id) if resource_id else None,
    )
    # Re-seeding an identity (same name or client id) replaces it.
    for key, existing in list(store.identities.items()):
        if existing.name == ident.name or existing.client_id == ident.client_id:
            del store.identities[key]
    store.identities[ident.client_id] = ident


def _vault(store: Store, spec: Any, where: str, base: Path | None) -> int:
    if not isinstance(spec, dict) or not spec.get("name"):
        raise SeedError(f"{where}: needs a name")
    name = str(spec["name"]).lower()
    vault = store.vaults.get(name)
    if vault is None:
        tenant = spec.get("tenant") or store.default_tenant
        tid = store.resolve_tenant(str(tenant)) if tenant else None
        if tid is None:
            raise SeedError(f"{where}.tenant: unknown tenant {tenant}")
        vault = Vault(name=name, tenant=tid)
        store.vaults[name] = vault
    for j, ra in enumerate(_list(spec, "roleAssignments", where + ".")):
        rwhere = f"{where}.roleAssignments[{j}]"
        if not isinstance(ra, dict) or not ra.get("identity") or not ra.get("role"):
            raise SeedError(f"{rwhere}: needs identity and role")
        ident = store.find_identity(str(ra["identity"]))
        principal = ident.object_id if ident else str(ra["identity"])
        try:
            role = canonical_role(str(ra["role"]))
        except ValueError as exc:
            raise SeedError(f"{rwhere}.role: {exc}") from None
        scope = _scope(str(ra.get("scope") or "/"))
        assignment = RoleAssignment(principal, role, scope)
        if assignment not in vault.role_assignments:
            vault.role_assignments.append(assignment)
    count = 0
    for j, s in enumerate(_list(spec, "secrets", where + ".")):
        count += _secret(vault, s, f"{where}.secrets[{j}]")
    for j, k in enumerate(_list(spec, "keys", where + ".")):
        count += _key(vault, k, f"{where}.keys[{j}]", base)
    for j, c in enumerate(_list(spec, "certificates", where + ".")):
        count += _certificate(vault, c, f"{where}.certificates[{j}]", base)
    return count


def _scope(scope: str) -> str:
    """Vault-relative scope from "/", "secrets/x", or a full ARM id ending in the vault."""
    low = scope.lower()
    marker = "/providers/microsoft.keyvault/vaults/"
    if marker in low:
        rest = scope[low.index(marker) + len(marker) :]
        scope = rest.split("/", 1)[1] if "/" in rest else "/"
    return "/" + scope.strip("/")


def _name(spec: Any, where: str) -> str:
    if not isinstance(spec, dict) or not spec.get("name"):
        raise SeedError(f"{where}: needs a name")
    name = str(spec["name"])
    if not NAME_RE.match(name):
        raise SeedError(f"{where}.name: {name!r} is not a valid Key Vault name")
    return name


def _secret(vault: Vault, spec: Any, where: str) -> int:
    name = _name(spec, where)
    n = 0
    for k, v in enumerate(_versions(spec)):
        vwhere = f"{where}.versions[{k}]"
        if v.get("value") is None:
            raise SeedError(f"{vwhere}: needs a value")
        vault_secrets.add_version(
            vault,
            name,
            SecretVersion(
                version=_version(v, vwhere),
                value=str(v["value"]),
                content_type=v.get("contentType"),
                attributes=_attrs(v, vwhere),
                tags=_tags(v, vwhere),
            ),
        )
        n += 1
    return n


def _key(vault: Vault, spec: Any, where: str, base: Path | None) -> int:
    name = _name(spec, where)
    n = 0
    for k, v in enumerate(_versions(spec)):
        vwhere = f"{where}.versions[{k}]"
        try:
            pem = _read(v, "pem", base)
            if pem is not None:
                key = load_private_key_pem(pem.encode())
            elif isinstance(v.get("jwk"), dict):
                key = private_key_from_jwk(v["jwk"])
            else:
                key = generate_key(str(v.get("kty", "RSA")), v.get("size"), v.get("curve"))
        except MaterialError as exc:
            raise SeedError(f"{vwhere}: {exc}") from None
        kty = str(v.get("kty") or key_kty(key))
        if kty.removesuffix("-HSM") != key_kty(key):
            raise SeedError(f"{vwhere}.kty: {kty} does not match the key material")
        ops = v.get("keyOps") or (RSA_OPS if kty.startswith("RSA") else EC_OPS)
        vault_keys.add_version(
            vault,
            name,
            KeyVersion(
                version=_version(v, vwhere),
                key=key,
                kty=kty,
                key_ops=list(ops),
                attributes=_attrs(v, vwhere),
                tags=_tags(v, vwhere),
            ),
        )
        n += 1
    return n


def _certificate(vault: Vault, spec: Any, where: str, base: Path | None) -> int:
    name = _name(spec, where)
    n = 0
    for k, v in enumerate(_versions(spec)):
        vwhere = f"{where}.versions[{k}]"
        content_type = v.get("contentType")
        try:
            pem = _read(v, "pem", base)
            pfx_b64 = _read(v, "pfx", base) if v.get("pfx") else None
            if v.get("pfxFile"):
                path = Path(str(v["pfxFile"]))
                if not path.is_absolute() and base is not None:
                    path = base / path
                pfx_b64 = base64.b64encode(path.read_bytes()).decode()
            if pem is not None:
                material = parse_pem_bundle(pem)
                content_type = content_type or PEM_CONTENT_TYPE
                policy = cert_policy.imported_policy(material, content_type, v.get("policy"))
            elif pfx_b64 is not None:
                material = parse_pfx(base64.b64decode(pfx_b64), v.get("password"))
                content_type = content_type or PFX_CONTENT_TYPE
                policy = cert_policy.imported_policy(material, content_type, v.get("policy"))
            else:
                policy = _generate_policy(v, content_type)
                material, _ = cert_policy.generate(policy)
        except MaterialError as exc:
            raise SeedError(f"{vwhere}: {exc}") from None
        vault_certificates.add_version(
            vault,
            name,
            material,
            policy,
            _attrs(v, vwhere),
            _tags(v, vwhere),
            version=_version(v, vwhere),
        )
        n += 1
    return n


def _generate_policy(v: dict[str, Any], content_type: str | None) -> dict[str, Any]:
    """A Key Vault policy from the seed's short form (`generate:`) or a full `policy:`."""
    if isinstance(v.get("policy"), dict):
        policy = cert_policy.policy_from_request(v["policy"], None)
    else:
        g = v.get("generate") or {}
        policy = cert_policy.default_policy()
        kty = str(g.get("kty", "RSA"))
        kp: dict[str, Any] = {"exportable": True, "kty": kty, "reuse_key": False}
        if kty.startswith("EC"):
            kp["crv"] = g.get("curve", "P-256")
        else:
            kp["key_size"] = int(g.get("size", 2048))
        policy["key_props"] = kp
        x5 = policy["x509_props"]
        x5["subject"] = g.get("subject", f"CN={v.get('name', 'emulator')}")
        x5["validity_months"] = int(g.get("validityMonths", 12))
        if g.get("dnsNames"):
            x5["sans"] = {"dns_names": list(g["dnsNames"])}
        if kty.startswith("EC"):
            x5["key_usage"] = ["digitalSignature"]
    if content_type:
        policy["secret_props"] = {"contentType": content_type}
    return policy
