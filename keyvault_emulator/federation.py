"""Workload identity federation: a client assertion (a Kubernetes service-account token, say)
checked against the identity's federated credentials and the issuer's signing keys, with
Entra ID's errors."""

from __future__ import annotations

import logging
import time
from typing import Any

import aiohttp
import jwt

from .errors import EntraError
from .jwks import JwksCache
from .store import FederatedCredential, Identity, Issuer, Store

log = logging.getLogger("keyvault_emulator.entra")


def _no_match(claims: dict[str, Any]) -> EntraError:
    aud = claims.get("aud")
    aud_text = ",".join(aud) if isinstance(aud, list) else str(aud)
    return EntraError(
        401,
        "invalid_client",
        70021,
        "No matching federated identity record found for presented assertion. "
        f"Assertion Issuer: '{claims.get('iss')}'. Assertion Subject: '{claims.get('sub')}'. "
        f"Assertion Audience: '{aud_text}'. https://docs.microsoft.com/en-us/azure/"
        "active-directory/develop/workload-identity-federation",
    )


def _issuer_for(store: Store, iss: str) -> Issuer:
    for key in (iss, iss.rstrip("/"), iss.rstrip("/") + "/"):
        if key in store.issuers:
            return store.issuers[key]
    return Issuer(iss)


async def verify_federated(
    store: Store, jwks_cache: JwksCache, identity: Identity, assertion: str
) -> None:
    try:
        header = jwt.get_unverified_header(assertion)
        claims = jwt.decode(assertion, options={"verify_signature": False})
    except jwt.InvalidTokenError:
        raise EntraError(
            400, "invalid_request", 50027, "JWT token is invalid or malformed."
        ) from None
    iss = str(claims.get("iss", ""))
    creds = [c for c in identity.federated_credentials if c.issuer == iss]
    if not creds:
        raise _no_match(claims)
    issuer = _issuer_for(store, iss)
    verified, expired = None, False
    # A key the cached set lacks (an issuer that rotated, or a test's new kube-apiserver on the
    # same URL) triggers one fresh fetch before the assertion is refused.
    for refresh in (False, True):
        if refresh and issuer.jwks is not None:
            break
        try:
            key_set = await jwks_cache.keys(issuer, refresh=refresh)
        except (aiohttp.ClientError, OSError, ValueError, KeyError) as exc:
            log.warning("issuer keys unavailable", extra={"issuer": iss, "error": str(exc)})
            raise EntraError(
                401,
                "invalid_client",
                50166,
                f"Request to External OIDC endpoint failed for issuer '{iss}'.",
            ) from None
        verified, expired = _verify_with(assertion, header, key_set)
        if verified is not None or expired:
            break
    if expired:
        now = int(time.time())
        raise EntraError(
            400,
            "invalid_client",
            700024,
            f"Client assertion is not within its valid time range. Current time: "
            f"{_iso(now)}, assertion valid from {_iso(claims.get('nbf', claims.get('iat')))}, "
            f"expiry time of assertion {_iso(claims.get('exp'))}. Review the documentation at "
            "https://docs.microsoft.com/azure/active-directory/develop/"
            "active-directory-certificate-credentials .",
        )
    if verified is None:
        raise EntraError(401, "invalid_client", 50013, "Assertion failed signature validation.")
    if not any(_matches(c, verified) for c in creds):
        raise _no_match(verified)


def _verify_with(
    assertion: str, header: dict[str, Any], key_set: dict[str, Any]
) -> tuple[dict[str, Any] | None, bool]:
    """(claims, expired): claims when a key of the set verifies the assertion."""
    kid = header.get("kid")
    candidates = [k for k in key_set.get("keys", []) if not kid or k.get("kid") in (kid, None)]
    for jwk in candidates:
        try:
            pyjwk = jwt.PyJWK(jwk)
            claims: dict[str, Any] = jwt.decode(
                assertion,
                pyjwk.key,
                algorithms=[str(header.get("alg", "RS256"))],
                options={"verify_aud": False, "require": ["exp", "iss", "sub", "aud"]},
                leeway=0,
            )
            return claims, False
        except jwt.ExpiredSignatureError:
            return None, True
        except (jwt.InvalidTokenError, jwt.PyJWKError, ValueError):
            continue
    return None, False


def _matches(cred: FederatedCredential, claims: dict[str, Any]) -> bool:
    aud = claims.get("aud")
    auds = aud if isinstance(aud, list) else [aud]
    return claims.get("sub") == cred.subject and any(a in cred.audiences for a in auds)


def _iso(ts: Any) -> str:
    try:
        return time.strftime("%Y-%m-%dT%H:%M:%S.0000000+00:00", time.gmtime(int(ts)))
    except (TypeError, ValueError):
        return "unknown"
