"""The admin and test API under /_emulator/ on localhost: health, seeding, faults, the request
log and counters, latency, an operator's secret setter and a token minter."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from . import seed, vault_secrets
from .errors import json_response
from .routing import Router
from .services import Services
from .store import Attributes, SecretVersion, Vault, new_version
from .tokens import resource_from_scope
from .vault_common import parse_tags


@dataclass
class AdminContext:
    request: web.Request
    services: Services
    params: dict[str, str]

    async def json(self) -> Any:
        raw = await self.request.read()
        return json.loads(raw) if raw.strip() else {}


async def health(ctx: AdminContext) -> web.StreamResponse:
    store = ctx.services.store
    return json_response(
        {
            "status": "ok",
            "pid": os.getpid(),
            "tenant": store.default_tenant,
            "vaults": sorted(store.vaults),
            "identities": len(store.identities),
            "ca": str(ctx.services.pki.ca_path),
        }
    )


async def post_seed(ctx: AdminContext) -> web.StreamResponse:
    text = (await ctx.request.read()).decode()
    try:
        added = seed.apply(ctx.services.store, seed.load_text(text))
    except seed.SeedError as exc:
        return json_response({"error": str(exc)}, status=400)
    ctx.services.jwks_cache.forget()
    ctx.services.changed()
    return json_response({"added": added})


async def get_faults(ctx: AdminContext) -> web.StreamResponse:
    return json_response({"faults": [r.to_json() for r in ctx.services.faults.rules]})


async def add_fault(ctx: AdminContext) -> web.StreamResponse:
    body = await ctx.json()
    if not isinstance(body, dict):
        raise ValueError("a fault rule is a JSON object")
    rule = ctx.services.faults.add(body)
    return json_response(rule.to_json(), status=201)


async def clear_faults(ctx: AdminContext) -> web.StreamResponse:
    ctx.services.faults.clear()
    return web.Response(status=204)


async def get_requests(ctx: AdminContext) -> web.StreamResponse:
    entries = list(ctx.services.requests.entries)
    q = ctx.request.query
    for key in ("service", "vault", "identity", "method"):
        if key in q:
            entries = [e for e in entries if str(e[key]).lower() == q[key].lower()]
    return json_response({"requests": entries})


async def clear_requests(ctx: AdminContext) -> web.StreamResponse:
    ctx.services.requests.clear()
    return web.Response(status=204)


async def get_counters(ctx: AdminContext) -> web.StreamResponse:
    return json_response(ctx.services.requests.counters())


async def get_latency(ctx: AdminContext) -> web.StreamResponse:
    return json_response({"latency_ms": ctx.services.latency_ms})


async def put_latency(ctx: AdminContext) -> web.StreamResponse:
    body = await ctx.json()
    ms = body.get("latency_ms", body.get("ms")) if isinstance(body, dict) else body
    if not isinstance(ms, int) or ms < 0:
        raise ValueError("latency_ms must be a non-negative integer")
    ctx.services.latency_ms = ms
    return json_response({"latency_ms": ms})


async def get_throttle(ctx: AdminContext) -> web.StreamResponse:
    t = ctx.services.throttle
    return json_response({"limit": t.limit, "window_seconds": t.window})


async def put_throttle(ctx: AdminContext) -> web.StreamResponse:
    """`{"limit": N, "window_seconds": 10}` per vault; limit 0 turns it off."""
    body = await ctx.json()
    if not isinstance(body, dict) or not isinstance(body.get("limit"), int):
        raise ValueError("body needs an integer 'limit'")
    window = body.get("window_seconds", 10)
    if not isinstance(window, int | float):
        raise ValueError("window_seconds must be a number")
    ctx.services.throttle.configure(body["limit"], float(window))
    return await get_throttle(ctx)


def _vault(ctx: AdminContext) -> Vault:
    vault = ctx.services.store.vaults.get(ctx.params["vault"].lower())
    if vault is None:
        raise KeyError(f"no vault {ctx.params['vault']}")
    return vault


async def put_secret(ctx: AdminContext) -> web.StreamResponse:
    """Sets a secret as an operator would, bypassing auth; answers with the new version id."""
    vault = _vault(ctx)
    name = ctx.params["name"]
    body = await ctx.json()
    if not isinstance(body, dict) or not isinstance(body.get("value"), str):
        raise ValueError("body needs a string 'value'")
    # Key Vault's limits (25 KB, tags) as the data plane words them: a KeyVaultError.
    value, content_type = vault_secrets.secret_fields(body)
    tags = parse_tags(body.get("tags"))
    if name.lower() in vault.deleted_secrets:
        raise ValueError(f"secret {name} is deleted; purge or recover it first")
    v = SecretVersion(
        version=new_version(),
        value=value,
        content_type=content_type,
        attributes=Attributes(
            enabled=bool(body.get("enabled", True)), nbf=body.get("nbf"), exp=body.get("exp")
        ),
        tags=tags,
    )
    vault_secrets.add_version(vault, name, v)
    ctx.services.changed()
    return json_response({"name": name, "version": v.version})


async def patch_secret_version(ctx: AdminContext) -> web.StreamResponse:
    """Enables or disables one version (or the newest) as an operator."""
    vault = _vault(ctx)
    name = ctx.params["name"]
    version = ctx.params.get("version", "")
    versions = vault.secrets.get(name.lower()) or []
    targets = [v for v in versions if not version or v.version == version.lower()]
    if not targets:
        raise KeyError(f"no secret {name}/{version}")
    target = targets[-1]
    body = await ctx.json()
    if "enabled" in body:
        target.attributes.enabled = bool(body["enabled"])
    ctx.services.changed()
    return json_response(
        {"name": name, "version": target.version, "enabled": target.attributes.enabled}
    )


async def mint_token(ctx: AdminContext) -> web.StreamResponse:
    """A token for an identity without going through Entra ID (benchmarks, expiry tests)."""
    body = await ctx.json()
    ident = ctx.services.store.find_identity(str(body.get("identity", "")))
    if ident is None:
        raise KeyError(f"no identity {body.get('identity')}")
    resource = str(body.get("resource") or resource_from_scope(str(body.get("scope", ""))))
    resource = resource or "https://vault.azure.net"
    lifetime = int(body.get("lifetime_seconds", ctx.services.store.token_lifetime))
    token, exp = ctx.services.authority.mint(ident, resource, lifetime)
    return json_response({"access_token": token, "expires_on": exp})


def register(router: Router[AdminContext]) -> None:
    p = "/_emulator"
    router.add("GET", p + "/health", health)
    router.add("POST", p + "/seed", post_seed)
    router.add("GET", p + "/faults", get_faults)
    router.add("POST", p + "/faults", add_fault)
    router.add("DELETE", p + "/faults", clear_faults)
    router.add("GET", p + "/requests", get_requests)
    router.add("DELETE", p + "/requests", clear_requests)
    router.add("GET", p + "/counters", get_counters)
    router.add("DELETE", p + "/counters", clear_requests)
    router.add("GET", p + "/latency", get_latency)
    router.add("PUT", p + "/latency", put_latency)
    router.add("GET", p + "/throttle", get_throttle)
    router.add("PUT", p + "/throttle", put_throttle)
    router.add("PUT", p + "/vaults/{vault}/secrets/{name}", put_secret)
    router.add("PATCH", p + "/vaults/{vault}/secrets/{name}/{version?}", patch_secret_version)
    router.add("POST", p + "/token", mint_token)
