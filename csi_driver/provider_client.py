"""The provider side of a publish: find the provider's socket, call Mount, check the answer.

Channels are cached per socket path (one HTTP/2 connection per provider, as upstream), but the
socket is looked up on every call so a provider that went away is reported as not found.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass

import grpc
from grpc import aio

from secrets_store_api import provider_pb2, provider_pb2_grpc

from .atomic_writer import FileProjection, PayloadError, validate_path
from .errors import GRPC_PROVIDER_ERROR, ProviderError, ProviderUnavailable

PLUGIN_NAME = re.compile(r"^[a-zA-Z0-9_-]{0,30}$")

# Upstream's service config: up to 3 attempts on UNAVAILABLE, backoff from 1 s.
SERVICE_CONFIG = json.dumps(
    {
        "methodConfig": [
            {
                "name": [{"service": "v1alpha1.CSIDriverProvider"}],
                "retryPolicy": {
                    "maxAttempts": 3,
                    "initialBackoff": "1s",
                    "maxBackoff": "10s",
                    "backoffMultiplier": 1.1,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
        ]
    }
)


@dataclass(frozen=True)
class MountResult:
    object_versions: dict[str, str]
    files: dict[str, FileProjection]


class ProviderClients:
    """One channel per provider socket; looked up across the provider directories in order."""

    def __init__(self, paths: tuple[str, ...], max_recv_msg_size: int, timeout: float) -> None:
        self._paths = paths
        self._max_recv = max_recv_msg_size
        self._timeout = timeout
        self._channels: dict[str, aio.Channel] = {}

    def socket_path(self, provider: str) -> str:
        if not PLUGIN_NAME.match(provider):
            raise ProviderError(f'invalid provider: provider "{provider}"')
        for directory in self._paths:
            candidate = os.path.join(directory, f"{provider}.sock")
            if os.path.exists(candidate):
                return candidate
        raise ProviderUnavailable(f'provider not found: provider "{provider}"')

    def _stub(self, provider: str) -> provider_pb2_grpc.CSIDriverProviderStub:
        try:
            path = self.socket_path(provider)
        except ProviderUnavailable as e:
            raise ProviderUnavailable(
                f'error connecting to provider "{provider}": {e.message}'
            ) from None
        channel = self._channels.get(path)
        if channel is None:
            channel = aio.insecure_channel(
                f"unix:{path}",
                options=[
                    ("grpc.default_authority", "localhost"),
                    ("grpc.max_receive_message_length", self._max_recv),
                    ("grpc.enable_retries", 1),
                    ("grpc.service_config", SERVICE_CONFIG),
                    # a provider that restarts is reached again within a second, not after
                    # gRPC's default reconnect backoff (up to 2 minutes)
                    ("grpc.initial_reconnect_backoff_ms", 100),
                    ("grpc.min_reconnect_backoff_ms", 100),
                    ("grpc.max_reconnect_backoff_ms", 1000),
                ],
            )
            self._channels[path] = channel
        return provider_pb2_grpc.CSIDriverProviderStub(channel)

    async def version(self, provider: str, deadline: float = 5) -> str:
        stub = self._stub(provider)
        try:
            resp = await stub.Version(
                provider_pb2.VersionRequest(version="v1alpha1"), timeout=deadline
            )
        except aio.AioRpcError as e:
            raise _rpc_error(e) from None
        return str(resp.runtime_version)

    async def mount(
        self,
        provider: str,
        attributes: str,
        secrets: str,
        target_path: str,
        permission: str,
        current_versions: dict[str, str] | None = None,
        deadline: float | None = None,
    ) -> MountResult:
        stub = self._stub(provider)
        request = provider_pb2.MountRequest(
            attributes=attributes,
            secrets=secrets,
            target_path=target_path,
            permission=permission,
            current_object_version=[
                provider_pb2.ObjectVersion(id=k, version=v)
                for k, v in sorted((current_versions or {}).items())
            ],
        )
        try:
            resp = await stub.Mount(request, timeout=min(deadline or self._timeout, self._timeout))
        except aio.AioRpcError as e:
            raise _rpc_error(e) from None
        return check_response(resp)

    async def close(self) -> None:
        channels, self._channels = self._channels, {}
        for channel in channels.values():
            await channel.close()


def _rpc_error(e: aio.AioRpcError) -> ProviderError:
    """UNAVAILABLE (nobody listening, or the provider went away mid-call) is worth waiting for;
    anything else is the provider's answer."""
    if e.code() == grpc.StatusCode.UNAVAILABLE:
        return ProviderUnavailable(_describe(e))
    return ProviderError(_describe(e))


def _describe(e: aio.AioRpcError) -> str:
    """Go's rendering of a gRPC error, which users grep for."""
    code = e.code()
    name = "".join(part.capitalize() for part in code.name.split("_")) if code else "Unknown"
    name = {"DeadlineExceeded": "DeadlineExceeded", "Ok": "OK"}.get(name, name)
    text = f"rpc error: code = {name} desc = {e.details()}"
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED and "larger than max" in (e.details() or ""):
        text += " (set --max-call-recv-msg-size to allow larger provider responses)"
    return text


def check_response(resp: provider_pb2.MountResponse) -> MountResult:
    """Upstream's checks, in upstream's order: provider error code, object versions, paths."""
    if resp.HasField("error") and resp.error.code:
        raise ProviderError(
            f"mount request failed with provider error code {resp.error.code}", resp.error.code
        )
    if len(resp.object_version) == 0:
        raise ProviderError("missing object versions", GRPC_PROVIDER_ERROR)
    versions = {ov.id: ov.version for ov in resp.object_version}
    files: dict[str, FileProjection] = {}
    for f in resp.files:
        try:
            validate_path(f.path)
        except PayloadError as e:
            raise ProviderError(str(e), "FileWriteError") from None
        if f.path in files:
            raise ProviderError(
                f"duplicate file path in provider response: {f.path}", "FileWriteError"
            )
        files[f.path] = FileProjection(data=bytes(f.contents), mode=f.mode & 0o777)
    return MountResult(object_versions=versions, files=files)
