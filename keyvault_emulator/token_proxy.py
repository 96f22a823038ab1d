"""The AKS identity-binding token proxy: the endpoint a pod's service-account token (audience
`api://AKSIdentityBinding`) is exchanged at for an Entra ID token, instead of at Entra ID itself.

Clients (azidentity's custom token proxy transport, used by the upstream provider v1.8) keep the
Entra ID request as it is and only send it elsewhere: same method, path, query and form, to the
proxy URL, over TLS with the configured SNI name. So the proxy answers Entra ID's v2 paths, on a
listener of its own whose certificate names only the SNI name (a client that checks another name
fails its handshake, as against the real proxy).
"""

from __future__ import annotations

from typing import Any

import jwt

from .entra import EntraContext, _client_credentials, _resource, _tenant_or_error, openid_v2
from .errors import EntraError, json_response
from .federation import verify_federated
from .routing import Router

IDENTITY_BINDING_AUDIENCE = "api://AKSIdentityBinding"
JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


def _wrong_audience(aud: Any) -> EntraError:
    return EntraError(
        401,
        "invalid_client",
        700212,
        f"The service account token's audience {aud!r} is not {IDENTITY_BINDING_AUDIENCE}: "
        "the identity-binding proxy exchanges only tokens requested for that audience.",
    )


async def token(ctx: EntraContext) -> Any:
    """Client credentials with a service-account token as the client assertion; the identity
    (an app or a user-assigned managed identity) must trust it through a federated credential
    for the identity-binding audience."""
    store = ctx.services.store
    form = await ctx.request.post()
    tenant = ctx.params["tenant"]
    tid = _tenant_or_error(ctx, tenant)
    if str(form.get("grant_type", "")) != "client_credentials":
        raise EntraError(
            400,
            "unsupported_grant_type",
            70003,
            f"The app requested an unsupported grant type '{form.get('grant_type', '')}'.",
        )
    client_id, secret = _client_credentials(ctx.request, form)
    resource = _resource(form, v2=True)
    assertion = str(form.get("client_assertion", ""))
    if secret or not assertion or form.get("client_assertion_type") != JWT_BEARER:
        raise EntraError(
            400,
            "invalid_request",
            50012,
            "The identity-binding proxy takes a service account token as client_assertion "
            f"(client_assertion_type {JWT_BEARER}), never a client secret.",
        )
    identity = store.identities.get(client_id) or store.find_identity(client_id)
    if (
        identity is None
        or identity.kind == "systemAssigned"
        or identity.tenant.lower() != tid.lower()
        or identity.client_id.lower() != client_id.lower()
    ):
        raise EntraError(
            400,
            "unauthorized_client",
            700016,
            f"Application with identifier '{client_id}' was not found in the directory '{tenant}'.",
        )
    _check_audience(assertion)
    await verify_federated(store, ctx.services.jwks_cache, identity, assertion)
    lifetime = store.token_lifetime
    access, _ = ctx.services.authority.mint(identity, resource, lifetime)
    return json_response(
        {
            "token_type": "Bearer",
            "expires_in": lifetime,
            "ext_expires_in": lifetime,
            "access_token": access,
        }
    )


def _check_audience(assertion: str) -> None:
    try:
        claims = jwt.decode(assertion, options={"verify_signature": False})
    except jwt.InvalidTokenError:
        raise EntraError(
            400, "invalid_request", 50027, "JWT token is invalid or malformed."
        ) from None
    aud = claims.get("aud")
    auds = aud if isinstance(aud, list) else [aud]
    if IDENTITY_BINDING_AUDIENCE not in auds:
        raise _wrong_audience(aud)


def register(router: Router[EntraContext]) -> None:
    router.add("GET", "/{tenant}/v2.0/.well-known/openid-configuration", openid_v2)
    router.add("POST", "/{tenant}/oauth2/v2.0/token", token)
