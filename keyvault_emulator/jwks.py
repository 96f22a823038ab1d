"""Workload-identity issuers' signing keys: inline from the seed, or fetched from the issuer
and kept for a few minutes, as Entra ID does."""

from __future__ import annotations

import json
import ssl
import time
from pathlib import Path
from typing import Any

import aiohttp

from .store import Issuer

JWKS_TTL = 300.0


class JwksCache:
    """Issuer keys: inline from the seed, or fetched (jwks_uri, else OIDC discovery) and kept
    for a few minutes, as Entra ID does."""

    def __init__(self) -> None:
        self._cache: dict[str, tuple[float, dict[str, Any]]] = {}

    def forget(self) -> None:
        self._cache.clear()

    async def keys(self, issuer: Issuer, refresh: bool = False) -> dict[str, Any]:
        if issuer.jwks is not None:
            return issuer.jwks
        hit = self._cache.get(issuer.issuer)
        if hit and hit[0] > time.monotonic() and not refresh:
            return hit[1]
        ctx = ssl.create_default_context(cafile=issuer.ca_file) if issuer.ca_file else None
        headers = {}
        if issuer.bearer_token_file:
            text = Path(issuer.bearer_token_file).read_text()  # noqa: ASYNC240 - tiny local file
            headers["Authorization"] = "Bearer " + text.strip()
        timeout = aiohttp.ClientTimeout(total=10)
        async with aiohttp.ClientSession(timeout=timeout, headers=headers) as session:
            uri = issuer.jwks_uri
            if not uri:
                url = issuer.issuer.rstrip("/") + "/.well-known/openid-configuration"
                async with session.get(url, ssl=ctx if ctx else True) as resp:
                    resp.raise_for_status()
                    uri = str((await resp.json(content_type=None))["jwks_uri"])
            async with session.get(uri, ssl=ctx if ctx else True) as resp:
                resp.raise_for_status()
                keys: dict[str, Any] = json.loads(await resp.text())
        self._cache[issuer.issuer] = (time.monotonic() + JWKS_TTL, keys)
        return keys
