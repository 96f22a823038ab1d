"""Entra ID v2 on the authority host: instance discovery, OpenID configuration, JWKS, and the
token endpoint for client credentials (client secret, or a client assertion: a workload
identity's federated token)."""

from __future__ import annotations

import base64
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

from aiohttp import web

from .errors import EntraError, json_response
from .federation import verify_federated
from .routing import Router
from .services import Services
from .store import Identity
from .tokens import resource_from_scope

log = logging.getLogger("keyvault_emulator.entra")

JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
META_TENANTS = ("common", "organizations", "consumers")


@dataclass
class EntraContext:
    request: web.Request
    services: Services
    params: dict[str, str]

    @property
    def host(self) -> str:
        return self.request.host.split(":")[0].lower()


def _unknown_tenant(tenant: str) -> EntraError:
    return EntraError(
        400,
        "invalid_tenant",
        90002,
        f"Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID and are "
        "signing into the correct cloud. Check with your subscription administrator, this may "
        "happen if there are no active subscriptions for the tenant.",
    )


def _tenant_or_error(ctx: EntraContext, tenant: str) -> str:
    tid = ctx.services.store.resolve_tenant(tenant)
    if tid is None:
        raise _unknown_tenant(tenant)
    return tid


async def instance_discovery(ctx: EntraContext) -> web.StreamResponse:
    endpoint = ctx.request.query.get("authorization_endpoint", "")
    parsed = urlparse(endpoint)
    host = (parsed.hostname or ctx.host).lower()
    if host not in ctx.services.store.authority_hosts():
        return json_response(
            {
                "error": "invalid_instance",
                "error_description": "AADSTS50049: Unknown or invalid instance.",
                "error_codes": [50049],
            },
            status=400,
        )
    tenant = parsed.path.strip("/").split("/")[0] if parsed.path.strip("/") else "common"
    return json_response(
        {
            "tenant_discovery_endpoint": (
                f"https://{host}/{tenant}/v2.0/.well-known/openid-configuration"
            ),
            "api-version": "1.1",
            "metadata": [{"preferred_network": host, "preferred_cache": host, "aliases": [host]}],
        }
    )


def _openid(host: str, tenant: str, v2: bool) -> dict[str, Any]:
    base = f"https://{host}/{tenant}"
    suffix = "/v2.0" if v2 else ""
    return {
        "token_endpoint": f"{base}/oauth2{suffix}/token",
        "token_endpoint_auth_methods_supported": [
            "client_secret_post",
            "private_key_jwt",
            "client_secret_basic",
        ],
        "jwks_uri": f"{base}/discovery{suffix}/keys",
        "response_modes_supported": ["query", "fragment", "form_post"],
        "subject_types_supported": ["pairwise"],
        "id_token_signing_alg_values_supported": ["RS256"],
        "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
        "scopes_supported": ["openid", "profile", "email", "offline_access"],
        "issuer": f"{base}/v2.0" if v2 else f"https://sts.windows.net/{tenant}/",
        "request_uri_parameter_supported": False,
        "authorization_endpoint": f"{base}/oauth2{suffix}/authorize",
        "device_authorization_endpoint": f"{base}/oauth2{suffix}/devicecode",
        "http_logout_supported": True,
        "frontchannel_logout_supported": True,
        "end_session_endpoint": f"{base}/oauth2{suffix}/logout",
        "claims_supported": ["sub", "iss", "aud", "exp", "iat", "tid", "oid", "appid"],
        "tenant_region_scope": "NA",
        "cloud_instance_name": host.removeprefix("login."),
        "cloud_graph_host_name": "graph.windows.net",
        "msgraph_host": "graph.microsoft.com",
    }


async def openid_v2(ctx: EntraContext) -> web.StreamResponse:
    tenant = ctx.params["tenant"]
    tid = "{tenantid}" if tenant.lower() in META_TENANTS else _tenant_or_error(ctx, tenant)
    return json_response(_openid(ctx.host, tid, True))


async def openid_v1(ctx: EntraContext) -> web.StreamResponse:
    tenant = ctx.params["tenant"]
    tid = "{tenantid}" if tenant.lower() in META_TENANTS else _tenant_or_error(ctx, tenant)
    return json_response(_openid(ctx.host, tid, False))


async def jwks(ctx: EntraContext) -> web.StreamResponse:
    tenant = ctx.params["tenant"]
    if tenant.lower() not in META_TENANTS:
        _tenant_or_error(ctx, tenant)
    return json_response(ctx.services.authority.jwks())


# --- token endpoint -------------------------------------------------------------------------


def _client_not_found(client_id: str, tenant: str) -> EntraError:
    return EntraError(
        400,
        "unauthorized_client",
        700016,
        f"Application with identifier '{client_id}' was not found in the directory '{tenant}'. "
        "This can happen if the application has not been installed by the administrator of the "
        "tenant or consented to by any user in the tenant. You may have sent your "
        "authentication request to the wrong tenant.",
    )


def _missing(param: str) -> EntraError:
    return EntraError(
        400,
        "invalid_request",
        900144,
        f"The request body must contain the following parameter: '{param}'.",
    )


async def token(ctx: EntraContext) -> web.StreamResponse:
    return await _token(ctx, v2=True)


async def token_v1(ctx: EntraContext) -> web.StreamResponse:
    return await _token(ctx, v2=False)


async def _token(ctx: EntraContext, v2: bool) -> web.StreamResponse:
    """Client credentials, checked in Entra ID's order: tenant, grant, client, scope or
    resource, registration, then the secret or assertion."""
    store = ctx.services.store
    form = await ctx.request.post()
    tenant = ctx.params["tenant"]
    tid = _tenant_or_error(ctx, tenant)
    _check_grant(form)
    client_id, secret = _client_credentials(ctx.request, form)
    resource = _resource(form, v2)
    identity = store.identities.get(client_id) or store.find_identity(client_id)
    if (
        identity is None
        or identity.managed
        or identity.tenant.lower() != tid.lower()
        or identity.client_id.lower() != client_id.lower()
    ):
        raise _client_not_found(client_id, tenant)
    await _authenticate_client(ctx.services, identity, form, secret)
    lifetime = store.token_lifetime
    access, exp = ctx.services.authority.mint(identity, resource, lifetime)
    body: dict[str, Any] = {
        "token_type": "Bearer",
        "expires_in": lifetime,
        "ext_expires_in": lifetime,
        "access_token": access,
    }
    if not v2:
        body.update(
            expires_on=str(exp),
            not_before=str(exp - lifetime),
            resource=resource,
            expires_in=str(lifetime),
            ext_expires_in=str(lifetime),
        )
    return json_response(body)


def _check_grant(form: Mapping[str, Any]) -> None:
    grant = str(form.get("grant_type", ""))
    if not grant:
        raise _missing("grant_type")
    if grant != "client_credentials":
        raise EntraError(
            400,
            "unsupported_grant_type",
            70003,
            f"The app requested an unsupported grant type '{grant}'.",
        )


def _client_credentials(request: web.Request, form: Mapping[str, Any]) -> tuple[str, Any]:
    """(client id, client secret or None) from the form, else from HTTP Basic."""
    client_id = str(form.get("client_id", ""))
    secret = form.get("client_secret")
    auth = request.headers.get("Authorization", "")
    if auth.lower().startswith("basic "):
        try:
            user, _, pw = base64.b64decode(auth[6:]).decode().partition(":")
        except ValueError:
            user, pw = "", ""
        client_id = client_id or user
        secret = secret or pw
    if not client_id:
        raise _missing("client_id")
    return client_id, secret


def _resource(form: Mapping[str, Any], v2: bool) -> str:
    """The resource the token is for: v2 takes a `<resource>/.default` scope, v1 `resource`."""
    if not v2:
        resource = str(form.get("resource", ""))
        if not resource:
            raise _missing("resource")
        return resource
    scope = str(form.get("scope", ""))
    if not scope:
        raise _missing("scope")
    if not any(s.endswith("/.default") for s in scope.split()):
        raise EntraError(
            400,
            "invalid_scope",
            1002012,
            f"The provided value for scope {scope} is not valid. Client credential flows "
            "must have a scope value with /.default suffixed to the resource identifier "
            "(application ID URI).",
        )
    return resource_from_scope(scope)


async def _authenticate_client(
    services: Services, identity: Identity, form: Mapping[str, Any], secret: Any
) -> None:
    """A client secret the identity has, else a federated assertion it trusts."""
    assertion = form.get("client_assertion")
    if secret:
        if str(secret) not in identity.client_secrets:
            raise EntraError(
                401,
                "invalid_client",
                7000215,
                "Invalid client secret provided. Ensure the secret being sent in the request is "
                "the client secret value, not the client secret ID, for a secret added to app "
                f"'{identity.client_id}'.",
            )
    elif assertion:
        if form.get("client_assertion_type") != JWT_BEARER:
            raise EntraError(
                400,
                "invalid_request",
                50012,
                "The client_assertion_type must be "
                "urn:ietf:params:oauth:client-assertion-type:jwt-bearer.",
            )
        await verify_federated(services.store, services.jwks_cache, identity, str(assertion))
    else:
        raise EntraError(
            401,
            "invalid_client",
            7000218,
            "The request body must contain the following parameter: 'client_assertion' or "
            "'client_secret'.",
        )


def register(router: Router[EntraContext]) -> None:
    router.add("GET", "/{tenant}/discovery/instance", instance_discovery)
    router.add("GET", "/{tenant}/v2.0/.well-known/openid-configuration", openid_v2)
    router.add("GET", "/{tenant}/.well-known/openid-configuration", openid_v1)
    router.add("GET", "/{tenant}/discovery/v2.0/keys", jwks)
    router.add("GET", "/{tenant}/discovery/keys", jwks)
    router.add("POST", "/{tenant}/oauth2/v2.0/token", token)
    router.add("POST", "/{tenant}/oauth2/token", token_v1)
