"""The managed-identity endpoints a node offers: IMDS (`/metadata/identity/oauth2/token`,
`Metadata: true`) and the App Service style endpoint (`IDENTITY_ENDPOINT` + `IDENTITY_HEADER`).
Every managed identity in the seed is attached to this "node"."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from .errors import ImdsError, json_response
from .routing import Router
from .services import Services
from .store import Identity, Store


@dataclass
class ImdsContext:
    request: web.Request
    services: Services
    params: dict[str, str]


def select_identity(store: Store, query: dict[str, str]) -> Identity:
    """The identity IMDS would answer for: the one named by client_id / object_id /
    msi_res_id (mi_res_id), else the system-assigned one."""
    managed = [i for i in store.identities.values() if i.managed]
    for param, attr in (
        ("client_id", "client_id"),
        ("object_id", "object_id"),
        ("principal_id", "object_id"),
        ("msi_res_id", "resource_id"),
        ("mi_res_id", "resource_id"),
    ):
        wanted = query.get(param)
        if wanted:
            for ident in managed:
                if (getattr(ident, attr) or "").lower() == wanted.lower():
                    return ident
            raise ImdsError(400, "invalid_request", "Identity not found")
    for ident in managed:
        if ident.kind == "systemAssigned":
            return ident
    users = [i for i in managed if i.kind == "userAssigned"]
    if len(users) == 1:
        return users[0]
    if users:
        raise ImdsError(
            400,
            "invalid_request",
            "Multiple user assigned identities exist, please specify the clientId / resourceId "
            "of the identity in the token request",
        )
    raise ImdsError(400, "invalid_request", "Identity not found")


def identity_of(store: Store, query: dict[str, str]) -> str:
    """Best-effort client id, for fault rules and the request log."""
    try:
        return select_identity(store, query).client_id
    except ImdsError:
        return query.get("client_id", "")


def _token_body(services: Services, ident: Identity, resource: str) -> dict[str, str]:
    lifetime = services.store.token_lifetime
    access, exp = services.authority.mint(ident, resource, lifetime)
    return {
        "access_token": access,
        "client_id": ident.client_id,
        "expires_in": str(lifetime),
        "expires_on": str(exp),
        "ext_expires_in": str(lifetime),
        "not_before": str(exp - lifetime),
        "resource": resource,
        "token_type": "Bearer",
    }


async def imds_token(ctx: ImdsContext) -> web.StreamResponse:
    req = ctx.request
    if req.headers.get("Metadata", "").lower() != "true":
        raise ImdsError(400, "invalid_request", "Required metadata header not specified")
    query = dict(req.query)
    if not query.get("api-version"):
        raise ImdsError(400, "invalid_request", "Required query variable 'api-version' is missing")
    resource = query.get("resource", "")
    if not resource:
        raise ImdsError(400, "invalid_request", "Required audience parameter not specified")
    ident = select_identity(ctx.services.store, query)
    return json_response(_token_body(ctx.services, ident, resource))


async def app_service_token(ctx: ImdsContext) -> web.StreamResponse:
    req = ctx.request
    if req.headers.get("X-IDENTITY-HEADER") != ctx.services.identity_header:
        return json_response(
            {
                "statusCode": 401,
                "message": "Unauthorized: the X-IDENTITY-HEADER is missing or wrong.",
            },
            status=401,
        )
    query = dict(req.query)
    resource = query.get("resource", "")
    if not resource:
        raise ImdsError(400, "invalid_request", "Required audience parameter not specified")
    ident = select_identity(ctx.services.store, query)
    body = _token_body(ctx.services, ident, resource)
    return json_response(
        {k: body[k] for k in ("access_token", "expires_on", "resource", "token_type", "client_id")}
    )


def register(router: Router[ImdsContext]) -> None:
    router.add("GET", "/metadata/identity/oauth2/token", imds_token)
    router.add("GET", "/msi/token", app_service_token)
