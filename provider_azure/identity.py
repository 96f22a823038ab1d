"""Who a Mount acts as: service principal, workload identity or managed identity.

Parsed from the attributes and the publish secrets (upstream's pkg/auth rules), with the key
that decides when a credential may be reused.
"""

from __future__ import annotations

import enum
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .errors import invalid

SERVICE_ACCOUNT_TOKENS = "csi.storage.k8s.io/serviceAccount.tokens"
WORKLOAD_IDENTITY_AUDIENCE = "api://AzureADTokenExchange"
IDENTITY_BINDING_AUDIENCE = "api://AKSIdentityBinding"


class IdentityMode(enum.StrEnum):
    SERVICE_PRINCIPAL = "ServicePrincipal"
    WORKLOAD_IDENTITY = "WorkloadIdentity"
    MANAGED_IDENTITY = "VMManagedIdentity"
    IDENTITY_BINDING = "AzureTokenProxy"


@dataclass(frozen=True)
class Identity:
    mode: IdentityMode
    tenant_id: str
    client_id: str = ""
    client_secret: str = field(default="", repr=False)
    assertion: str = field(default="", repr=False)
    user_assigned_identity_id: str = ""

    def cache_key(self, authority: str) -> tuple[str, ...]:
        """Key for credential reuse: never reuse a token beyond what its proof proves. For a
        client secret, its digest; for a workload identity (or identity binding), the digest of
        the exact service-account token. Not its claims: nobody here checks the token's
        signature, so a forged token with another pod's `iss`/`sub` must not ride on the Entra
        token a genuine one earned."""
        if self.mode is IdentityMode.SERVICE_PRINCIPAL:
            proof = hashlib.sha256(self.client_secret.encode()).hexdigest()
        elif self.mode in (IdentityMode.WORKLOAD_IDENTITY, IdentityMode.IDENTITY_BINDING):
            proof = "sha256:" + hashlib.sha256(self.assertion.encode()).hexdigest()
        else:
            proof = self.user_assigned_identity_id
        return (self.mode.value, authority, self.tenant_id, self.client_id, proof)


def parse_identity(
    attrib: Mapping[str, str],
    secrets: Mapping[str, str],
    tenant_id: str,
    use_vm: bool,
    use_token_proxy: bool = False,
) -> Identity:
    if use_token_proxy:
        return _identity_binding(attrib, secrets, tenant_id)
    if use_vm:
        return Identity(
            IdentityMode.MANAGED_IDENTITY,
            tenant_id,
            user_assigned_identity_id=attrib.get("userAssignedIdentityID", "").strip(),
        )
    client_id = attrib.get("clientID", "").strip()
    if client_id:
        tokens = (
            secrets.get(SERVICE_ACCOUNT_TOKENS) or attrib.get(SERVICE_ACCOUNT_TOKENS, "")
        ).strip()
        assertion = parse_service_account_token(tokens, WORKLOAD_IDENTITY_AUDIENCE)
        return Identity(
            IdentityMode.WORKLOAD_IDENTITY, tenant_id, client_id=client_id, assertion=assertion
        )
    return _service_principal(secrets, tenant_id)


def _identity_binding(
    attrib: Mapping[str, str], secrets: Mapping[str, str], tenant_id: str
) -> Identity:
    """Upstream's order: clientID, then the tokens, then the identity-binding audience's."""
    client_id = attrib.get("clientID", "").strip()
    if not client_id:
        raise invalid(
            "useAzureTokenProxy: clientID is required for identity binding (the client ID of "
            "the managed identity or app the service account is bound to)",
            "clientID",
        )
    tokens = (secrets.get(SERVICE_ACCOUNT_TOKENS) or attrib.get(SERVICE_ACCOUNT_TOKENS, "")).strip()
    assertion = parse_service_account_token(tokens, IDENTITY_BINDING_AUDIENCE, "identity binding")
    return Identity(
        IdentityMode.IDENTITY_BINDING, tenant_id, client_id=client_id, assertion=assertion
    )


def _service_principal(secrets: Mapping[str, str], tenant_id: str) -> Identity:
    if not secrets:
        raise invalid(
            "failed to get credentials, nodePublishSecretRef secret is not set: set clientID "
            "(workload identity), useVMManagedIdentity, or a nodePublishSecretRef with "
            "clientid and clientsecret",
            "credentials",
        )
    sp_id = sp_secret = ""
    for key, value in secrets.items():
        if key.lower() == "clientid":
            sp_id = value
        elif key.lower() == "clientsecret":
            sp_secret = value
    if not sp_id:
        raise invalid("could not find clientid in secrets (nodePublishSecretRef)", "clientid")
    if not sp_secret:
        raise invalid(
            "could not find clientsecret in secrets (nodePublishSecretRef)", "clientsecret"
        )
    return Identity(
        IdentityMode.SERVICE_PRINCIPAL, tenant_id, client_id=sp_id, client_secret=sp_secret
    )


def parse_service_account_token(
    tokens: str, audience: str, purpose: str = "workload identity"
) -> str:
    """The token for `audience` from kubelet's `{"<aud>": {"token": ..., ...}}` JSON."""
    reason = SERVICE_ACCOUNT_TOKENS
    if not tokens:
        raise invalid(
            f"failed to parse {purpose} tokens: service account tokens not found "
            f"(attribute {SERVICE_ACCOUNT_TOKENS}; is tokenRequests set on the CSIDriver?)",
            reason,
        )
    try:
        parsed: Any = json.loads(tokens)
    except (ValueError, RecursionError):
        raise invalid(
            f"failed to parse {purpose} tokens: {SERVICE_ACCOUNT_TOKENS} is not valid "
            "JSON (or is nested too deeply)",
            reason,
        ) from None
    entry = parsed.get(audience) if isinstance(parsed, dict) else None
    token = entry.get("token") if isinstance(entry, dict) else None
    if not isinstance(token, str) or not token:
        raise invalid(
            f"failed to parse {purpose} tokens: token for audience {audience} not found "
            f"(add audience {audience} to the CSIDriver tokenRequests)",
            reason,
        )
    return token
