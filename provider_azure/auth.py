"""Credentials (azure-identity `.aio`) and Key Vault clients, reused across mounts.

Upstream builds a new credential and client on every mount, so every mount pays a challenge,
instance discovery, OpenID configuration and a token. We keep one credential and one client
per (identity, vault): tokens and challenges are cached by the SDK. The cache key carries the
proof of identity (a digest of the client secret; the issuer and subject of the service-account
token), so a mount never rides on a token another identity earned.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from dataclasses import dataclass, field

from azure.core.credentials_async import AsyncTokenCredential
from azure.identity.aio import (
    ClientAssertionCredential,
    ClientSecretCredential,
    ManagedIdentityCredential,
)

from .keyvault import ClientOptions, VaultClient
from .parameters import Identity, IdentityMode, MountParameters
from .ratelimit import TokenBucket


@dataclass
class _Assertion:
    """The newest service-account token for one identity; the credential reads it on refresh."""

    token: str = field(repr=False)

    def __call__(self) -> str:
        return self.token


def build_credential(
    identity: Identity, authority: str
) -> tuple[AsyncTokenCredential, _Assertion | None]:
    if identity.mode is IdentityMode.MANAGED_IDENTITY:
        if identity.user_assigned_identity_id:
            return ManagedIdentityCredential(client_id=identity.user_assigned_identity_id), None
        return ManagedIdentityCredential(), None
    if identity.mode is IdentityMode.WORKLOAD_IDENTITY:
        holder = _Assertion(identity.assertion)
        return (
            ClientAssertionCredential(
                identity.tenant_id, identity.client_id, holder, authority=authority
            ),
            holder,
        )
    return (
        ClientSecretCredential(
            identity.tenant_id, identity.client_id, identity.client_secret, authority=authority
        ),
        None,
    )


class ClientCache:
    """One credential per identity and one VaultClient per (identity, vault), for the process.

    Least recently used identities beyond `max_identities` are closed and dropped, so rotated
    client secrets and short-lived service accounts do not accumulate."""

    def __init__(self, options: ClientOptions | None = None, max_identities: int = 256) -> None:
        self.options = options or ClientOptions()
        self.max_identities = max_identities
        self._credentials: OrderedDict[
            tuple[str, ...], tuple[AsyncTokenCredential, _Assertion | None]
        ] = OrderedDict()
        self._clients: dict[tuple[tuple[str, ...], str], VaultClient] = {}
        # Key Vault's limit is per vault, whichever identity asks.
        self._limiters: dict[str, TokenBucket] = {}
        self._lock = asyncio.Lock()
        self.credentials_built = 0

    async def client_for(self, params: MountParameters) -> VaultClient:
        authority = params.cloud.authority_host
        key = params.identity.cache_key(authority)
        async with self._lock:
            entry = self._credentials.get(key)
            if entry is None:
                entry = build_credential(params.identity, authority)
                self._credentials[key] = entry
                self.credentials_built += 1
                await self._evict()
            self._credentials.move_to_end(key)
            credential, holder = entry
            if holder is not None:
                holder.token = params.identity.assertion
            client_key = (key, params.vault_url)
            client = self._clients.get(client_key)
            if client is None:
                limiter = self._limiters.setdefault(params.vault_url, TokenBucket())
                client = VaultClient(
                    params.vault_name, params.vault_url, credential, self.options, limiter
                )
                self._clients[client_key] = client
            return client

    async def _evict(self) -> None:
        while len(self._credentials) > self.max_identities:
            old_key, (credential, _) = self._credentials.popitem(last=False)
            stale = [k for k in self._clients if k[0] == old_key]
            clients = [self._clients.pop(k) for k in stale]
            await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)
            await asyncio.gather(credential.close(), return_exceptions=True)

    async def close(self) -> None:
        clients = list(self._clients.values())
        credentials = [c for c, _ in self._credentials.values()]
        self._clients.clear()
        self._credentials.clear()
        await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)
        await asyncio.gather(*(c.close() for c in credentials), return_exceptions=True)
