"""One provider call per SecretProviderClass + service account + namespace: SecretSyncs that
share them share the call (in flight, and for a short window after, one poll's worth), as the
driver's rotation shares calls between pods.

The Mount request is the one the Sync Controller sends: the SPC's parameters, the controller
pod's name and uid as the pod, the SecretSync's namespace and service account, the tokens;
secrets `{}`; permission 0644; target path /mnt/secrets-store (never written to).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from dataclasses import dataclass

from csi_driver.errors import ProviderError
from csi_driver.provider_client import ProviderClients
from csi_driver.volumes import (
    FILE_PERMISSION,
    POD_NAME,
    POD_NAMESPACE,
    POD_SA_NAME,
    POD_UID,
    SA_TOKENS,
    build_mount_request,
)

from .tokens import TokenError, Tokens

TARGET_PATH = "/mnt/secrets-store"
MAX_SHARED = 10_000


@dataclass(frozen=True)
class SpcRef:
    """The SPC a call is for; its resourceVersion makes an edited SPC a new call."""

    namespace: str
    name: str
    version: str
    provider: str
    parameters: Mapping[str, str]


class FetchError(Exception):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


class Fetcher:
    def __init__(
        self,
        providers: ProviderClients,
        tokens: Tokens,
        pod_name: str,
        pod_uid: str,
        share_for: float,
    ) -> None:
        self.providers = providers
        self.tokens = tokens
        self.pod_name = pod_name
        self.pod_uid = pod_uid
        self.share_for = share_for
        self.calls = 0  # provider Mount calls made (benchmarks, tests)
        self._shared: dict[tuple[str, str, str, str], tuple[float, asyncio.Task[dict[str, bytes]]]]
        self._shared = {}

    async def files(self, spc: SpcRef, service_account: str, fresh: bool) -> dict[str, bytes]:
        """The provider's files for this SPC and service account; `fresh` skips a finished
        shared call (a forced sync), never an in-flight one."""
        key = (spc.namespace, spc.name, spc.version, service_account)
        entry = self._shared.get(key)
        now = time.monotonic()
        if entry is not None and (
            not entry[1].done() or (not fresh and now - entry[0] < self.share_for)
        ):
            return await asyncio.shield(entry[1])
        if len(self._shared) > MAX_SHARED:
            self._shared = {k: v for k, v in self._shared.items() if not v[1].done()}
        task = asyncio.create_task(self._call(spc, service_account))
        self._shared[key] = (now, task)
        try:
            return await asyncio.shield(task)
        except FetchError:
            self._shared.pop(key, None)  # a failure is not shared with later syncs
            raise

    async def _call(self, spc: SpcRef, service_account: str) -> dict[str, bytes]:
        try:
            tokens = await self.tokens.tokens_json(spc.namespace, service_account)
        except TokenError as e:
            raise FetchError("ControllerSyncError", str(e)) from None
        context = {
            POD_NAME: self.pod_name,
            POD_UID: self.pod_uid,
            POD_NAMESPACE: spc.namespace,
            POD_SA_NAME: service_account,
        }
        if tokens:
            context[SA_TOKENS] = tokens
        attributes, _ = build_mount_request(spc.parameters, context, {})
        self.calls += 1
        try:
            result = await self.providers.mount(
                spc.provider, attributes, "{}", TARGET_PATH, str(FILE_PERMISSION)
            )
        except ProviderError as e:
            raise FetchError("ProviderError", e.message) from None
        return {path: f.data for path, f in result.files.items()}
