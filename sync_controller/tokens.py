"""Service-account tokens for a SecretSync's provider call (TokenRequest, one audience per
request, 600 s as the Sync Controller asks and its admission policy checks), reused until a
fifth of their life is left."""

from __future__ import annotations

import datetime
import json
import time

from lightkube import AsyncClient
from lightkube.models.authentication_v1 import TokenRequestSpec
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import ServiceAccountToken

from csi_driver.kube import api_error_text

EXPIRATION = 600
MAX_CACHED = 10_000


class TokenError(Exception):
    pass


class Tokens:
    def __init__(self, client: AsyncClient, audiences: tuple[str, ...]) -> None:
        self.client = client
        self.audiences = audiences
        self._cache: dict[tuple[str, str, str], tuple[float, dict[str, str]]] = {}

    async def tokens_json(self, namespace: str, service_account: str) -> str:
        """kubelet's `{"<audience>":{"token":…,"expirationTimestamp":…}}`; "" with no audience."""
        out = {a: await self._token(namespace, service_account, a) for a in self.audiences}
        return json.dumps(out, separators=(",", ":")) if out else ""

    async def _token(self, namespace: str, service_account: str, audience: str) -> dict[str, str]:
        key = (namespace, service_account, audience)
        cached = self._cache.get(key)
        if cached is not None and time.monotonic() < cached[0]:
            return cached[1]
        try:
            tr = await self.client.create(
                ServiceAccountToken(
                    metadata=ObjectMeta(),
                    spec=TokenRequestSpec(audiences=[audience], expirationSeconds=EXPIRATION),
                ),
                name=service_account,
                namespace=namespace,
            )
        except Exception as e:
            raise TokenError(
                f"failed to get a token for serviceaccount {namespace}/{service_account} "
                f"(audience {audience}): {api_error_text(e)}"
            ) from None
        status = tr.status
        if status is None or not status.token or status.expirationTimestamp is None:
            raise TokenError("token request returned no token")
        exp: datetime.datetime = status.expirationTimestamp
        value = {"token": status.token, "expirationTimestamp": exp.strftime("%Y-%m-%dT%H:%M:%SZ")}
        if len(self._cache) > MAX_CACHED:
            self._cache.clear()
        self._cache[key] = (time.monotonic() + EXPIRATION * 0.8, value)
        return value
