"""Service-account tokens for a pod, as kubelet makes them for a publish (TokenRequest API,
bound to the pod, one per audience the CSIDriver object lists), so rotation can call a
provider with fresh credentials long after kubelet's own tokens expired."""

from __future__ import annotations

import json
from dataclasses import dataclass

from lightkube import AsyncClient
from lightkube.models.authentication_v1 import BoundObjectReference, TokenRequestSpec
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import ServiceAccountToken
from lightkube.resources.storage_v1 import CSIDriver

from .errors import KubeError
from .kube import api_error_text


@dataclass(frozen=True)
class TokenSettings:
    """What the CSIDriver object says about tokens."""

    audiences: tuple[tuple[str, int | None], ...]  # (audience, expirationSeconds)
    in_secrets: bool  # serviceAccountTokenInSecrets: tokens go in the publish secrets


async def token_settings(client: AsyncClient, driver_name: str) -> TokenSettings:
    try:
        driver = await client.get(CSIDriver, driver_name)
    except Exception as e:
        raise KubeError(f"failed to get csidriver {driver_name}: {api_error_text(e)}") from None
    spec = driver.spec
    if spec is None:
        return TokenSettings((), False)
    return TokenSettings(
        audiences=tuple((r.audience, r.expirationSeconds) for r in spec.tokenRequests or []),
        in_secrets=bool(spec.serviceAccountTokenInSecrets),
    )


async def request_token(
    client: AsyncClient,
    namespace: str,
    service_account: str,
    audience: str,
    expiration: int,
    bound: BoundObjectReference | None = None,
) -> dict[str, str]:
    """One TokenRequest, as kubelet's entry for `audience`: `{"token":…,"expirationTimestamp":…}`
    (the driver's rotation, bound to the pod; the SecretSync controller's, unbound)."""
    try:
        tr = await client.create(
            ServiceAccountToken(
                metadata=ObjectMeta(),
                spec=TokenRequestSpec(
                    audiences=[audience], expirationSeconds=expiration, boundObjectRef=bound
                ),
            ),
            name=service_account,
            namespace=namespace,
        )
    except Exception as e:
        raise KubeError(
            f"failed to request a token for serviceaccount {namespace}/{service_account}: "
            f"{api_error_text(e)}"
        ) from None
    status = tr.status
    if status is None or not status.token or status.expirationTimestamp is None:
        raise KubeError("token request returned no token")
    return {
        "token": status.token,
        "expirationTimestamp": status.expirationTimestamp.strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def tokens_json(tokens: dict[str, dict[str, str]]) -> str:
    """kubelet's `csi.storage.k8s.io/serviceAccount.tokens` value; "" for none."""
    return json.dumps(tokens, separators=(",", ":")) if tokens else ""


async def pod_tokens(
    client: AsyncClient,
    settings: TokenSettings,
    *,
    namespace: str,
    pod_name: str,
    pod_uid: str,
    service_account: str,
) -> str:
    """`{"<audience>":{"token":…,"expirationTimestamp":…}}` (kubelet's format); "" for none."""
    bound = BoundObjectReference(apiVersion="v1", kind="Pod", name=pod_name, uid=pod_uid)
    out = {
        audience: await request_token(
            client, namespace, service_account, audience, expiration or 3600, bound
        )
        for audience, expiration in settings.audiences
    }
    return tokens_json(out)
