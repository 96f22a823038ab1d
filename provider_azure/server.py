"""Transport: the v1alpha1.CSIDriverProvider servicer and gRPC health.

The only place that knows gRPC codes: ProviderError.kind maps to one code here, and the
message keeps upstream's `failed to mount objects, error: ` prefix so users' greps still work.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

import grpc

from secrets_store_api import provider_pb2, provider_pb2_grpc

from . import RUNTIME_NAME, __version__
from .errors import Kind, ProviderError
from .limits import capped, cut

if TYPE_CHECKING:
    # Loaded after the socket serves (provider_azure.__main__): the SDKs cost seconds of CPU
    # under a 50m quota, and Version and health must not wait for them.
    from .metrics import Metrics
    from .provider import Provider

# What Mount needs; a future while it loads, so Version and health answer at once.
Backend = tuple["Provider", "Metrics"]

log = logging.getLogger("provider_azure")

CODES = {
    Kind.INVALID_ARGUMENT: grpc.StatusCode.INVALID_ARGUMENT,
    Kind.NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    Kind.PERMISSION_DENIED: grpc.StatusCode.PERMISSION_DENIED,
    Kind.UNAUTHENTICATED: grpc.StatusCode.UNAUTHENTICATED,
    Kind.UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
    Kind.DEADLINE_EXCEEDED: grpc.StatusCode.DEADLINE_EXCEEDED,
    Kind.FAILED_PRECONDITION: grpc.StatusCode.FAILED_PRECONDITION,
    Kind.UNIMPLEMENTED: grpc.StatusCode.UNIMPLEMENTED,
    Kind.INTERNAL: grpc.StatusCode.INTERNAL,
}
MOUNT_PREFIX = "failed to mount objects, error: "


def _go_code_name(code: grpc.StatusCode) -> str:
    return "".join(part.capitalize() for part in code.name.split("_")).replace("Ok", "OK")


class ProviderServicer(provider_pb2_grpc.CSIDriverProviderServicer):  # type: ignore[misc]
    """Given the provider and metrics, or a future of both while they load: then Mount waits
    for them and Version does not."""

    def __init__(
        self,
        provider: Provider | None = None,
        metrics: Metrics | None = None,
        *,
        loading: asyncio.Future[Backend] | None = None,
    ) -> None:
        self._loading = loading
        self._ready: Backend | None = None
        if provider is not None and metrics is not None:
            self._ready = (provider, metrics)
        elif loading is None:
            raise ValueError("a provider and metrics, or a future of both")

    async def _backend(self) -> Backend:
        if self._ready is None:
            assert self._loading is not None
            self._ready = await asyncio.shield(self._loading)
        return self._ready

    async def Version(
        self, request: provider_pb2.VersionRequest, context: grpc.aio.ServicerContext
    ) -> provider_pb2.VersionResponse:
        if self._ready is not None:
            self._ready[1].observe_grpc("/v1alpha1.CSIDriverProvider/Version", "OK", "", 0.0)
        return provider_pb2.VersionResponse(
            version="v1alpha1", runtime_name=RUNTIME_NAME, runtime_version=__version__
        )

    async def Mount(
        self, request: provider_pb2.MountRequest, context: grpc.aio.ServicerContext
    ) -> provider_pb2.MountResponse:
        start = time.perf_counter()
        method = "/v1alpha1.CSIDriverProvider/Mount"
        fields: dict[str, Any] = {"target": cut(request.target_path, 512)}
        try:
            provider, _ = await self._backend()
            result = await provider.mount(
                request.attributes, request.secrets, request.permission, fields
            )
        except ProviderError as exc:
            code = CODES[exc.kind]
            message = capped(exc.message if exc.request_error else MOUNT_PREFIX + exc.message)
            self._done(method, code, message, exc.label, start, **fields)
            await context.abort(code, message)
            raise AssertionError("unreachable") from None
        except Exception:
            log.exception("mount failed unexpectedly", extra=fields)
            code, message = (
                grpc.StatusCode.INTERNAL,
                MOUNT_PREFIX + "internal error (see provider logs)",
            )
            self._done(method, code, message, Kind.INTERNAL.value, start, **fields)
            await context.abort(code, message)
            raise AssertionError("unreachable") from None
        self._done(method, grpc.StatusCode.OK, "", "", start, files=len(result.files), **fields)
        return provider_pb2.MountResponse(
            object_version=[
                provider_pb2.ObjectVersion(id=v.id, version=v.version)
                for v in result.object_versions
            ],
            files=[
                provider_pb2.File(path=f.path, mode=f.mode, contents=f.contents)
                for f in result.files
            ],
        )

    def _done(
        self,
        method: str,
        code: grpc.StatusCode,
        message: str,
        label: str,
        start: float,
        **fields: Any,
    ) -> None:
        """Log the (capped) message; the metric gets the bounded `label` instead."""
        seconds = time.perf_counter() - start
        name = _go_code_name(code)
        if self._ready is not None:
            self._ready[1].observe_grpc(method, name, label, seconds)
        level = logging.INFO if code is grpc.StatusCode.OK else logging.ERROR
        log.log(
            level,
            "mount" if code is grpc.StatusCode.OK else "mount failed",
            extra={
                "method": method,
                "code": name,
                "error": message,
                "duration_ms": round(seconds * 1000, 2),
                **fields,
            },
        )


# grpc.health.v1.Health/Check, without the grpcio-health-checking package: the request's only
# field is ignored and the response is `status: SERVING` (field 1, varint 1).
_SERVING = b"\x08\x01"


def health_handler() -> grpc.GenericRpcHandler:
    async def check(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return _SERVING

    return grpc.method_handlers_generic_handler(
        "grpc.health.v1.Health",
        {
            "Check": grpc.unary_unary_rpc_method_handler(
                check, request_deserializer=lambda b: b, response_serializer=lambda b: b
            )
        },
    )


async def check_health(socket_path: str, rpc_timeout: float) -> None:
    """One gRPC health Check over the unix socket, as upstream's /healthz does."""
    async with grpc.aio.insecure_channel(f"unix://{socket_path}") as channel:
        call = channel.unary_unary(
            "/grpc.health.v1.Health/Check",
            request_serializer=lambda b: b,
            response_deserializer=lambda b: b,
        )
        answer = await call(b"", timeout=rpc_timeout)
        if answer != _SERVING:
            raise RuntimeError("expected health check response serving")
