"""Service-account tokens for a SecretSync's provider call (TokenRequest, one audience per
request, 600 s as the Sync Controller asks and its admission policy checks), reused until a
fifth of their life is left; concurrent syncs of one (namespace, service account, audience)
share one request. The request itself is the driver's (csi_driver.tokens)."""

from __future__ import annotations

import asyncio
import time

from lightkube import AsyncClient

from csi_driver.errors import KubeError
from csi_driver.tokens import request_token, tokens_json

EXPIRATION = 600
MAX_CACHED = 10_000


class TokenError(Exception):
    pass


class Tokens:
    def __init__(self, client: AsyncClient, audiences: tuple[str, ...]) -> None:
        self.client = client
        self.audiences = audiences
        self._cache: dict[tuple[str, str, str], tuple[float, dict[str, str]]] = {}
        self._inflight: dict[tuple[str, str, str], asyncio.Task[dict[str, str]]] = {}

    async def tokens_json(self, namespace: str, service_account: str) -> str:
        """kubelet's `{"<audience>":{"token":…,"expirationTimestamp":…}}`; "" with no audience."""
        return tokens_json(
            {a: await self._token(namespace, service_account, a) for a in self.audiences}
        )

    async def _token(self, namespace: str, service_account: str, audience: str) -> dict[str, str]:
        key = (namespace, service_account, audience)
        cached = self._cache.get(key)
        if cached is not None and time.monotonic() < cached[0]:
            return cached[1]
        task = self._inflight.get(key)
        if task is None:
            task = asyncio.create_task(self._request(key))
            self._inflight[key] = task
            task.add_done_callback(lambda _: self._inflight.pop(key, None))
        return await asyncio.shield(task)

    async def _request(self, key: tuple[str, str, str]) -> dict[str, str]:
        namespace, service_account, audience = key
        try:
            value = await request_token(
                self.client, namespace, service_account, audience, EXPIRATION
            )
        except KubeError as e:
            raise TokenError(f"{e} (audience {audience})") from None
        if len(self._cache) > MAX_CACHED:
            self._cache.clear()
        self._cache[key] = (time.monotonic() + EXPIRATION * 0.8, value)
        return value
