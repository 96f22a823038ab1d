"""One Mount, from the request's three strings to files: parameters → client → fetch.

The domain entry point the servicer calls; it knows nothing of gRPC.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from .auth import ClientCache
from .clouds import CloudEnvironment
from .fetch import ContentOptions, Fetcher, MountResult
from .limits import cut
from .metrics import Metrics
from .objects import PARSED_OBJECTS
from .parameters import parse_mount

# Requests larger than this are parsed in a worker thread, so that the event loop (other
# mounts, the gRPC health check behind /healthz) keeps answering while a big one is parsed.
PARSE_INLINE_BYTES = 64 * 1024


class Provider:
    """Parameters → credential/client → fetch → files; no gRPC in here."""

    def __init__(
        self,
        content: ContentOptions,
        default_cloud: CloudEnvironment,
        metrics: Metrics,
        clients: ClientCache | None = None,
    ) -> None:
        self.default_cloud = default_cloud
        self.clients = clients or ClientCache()
        self.fetcher = Fetcher(content, observe=metrics.observe_keyvault)
        for cache in (PARSED_OBJECTS, *self.clients.caches()):
            metrics.watch(cache)

    async def mount(
        self,
        attributes: str,
        secrets: str,
        permission: str,
        log_fields: dict[str, Any] | None = None,
    ) -> MountResult:
        if len(attributes) + len(secrets) > PARSE_INLINE_BYTES:
            params = await asyncio.to_thread(
                parse_mount, attributes, secrets, permission, self.default_cloud
            )
        else:
            params = parse_mount(attributes, secrets, permission, self.default_cloud)
        if log_fields is not None:
            log_fields.update(
                pod=cut(f"{params.pod_namespace}/{params.pod_name}", 256),
                vault=params.vault_name,
                identity=params.identity.mode.value,
                objects=len(params.objects),
            )
        async with contextlib.AsyncExitStack() as stack:
            vault = await stack.enter_async_context(self.clients.lease(params))
            others = {
                name.lower(): await stack.enter_async_context(self.clients.lease(params, name))
                for name in params.other_vaults()
            }
            return await self.fetcher.mount(params, vault, others)

    async def close(self) -> None:
        await self.clients.close()
