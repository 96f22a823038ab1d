"""Transport: the v1alpha1.CSIDriverProvider servicer, gRPC health, and the HTTP endpoints.

The only place that knows gRPC codes: ProviderError.kind maps to one code here, and the
message keeps upstream's `failed to mount objects, error: ` prefix so users' greps still work.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import grpc
from aiohttp import web

from secrets_store_api import provider_pb2, provider_pb2_grpc

from . import RUNTIME_NAME, __version__
from .auth import ClientCache
from .clouds import CloudEnvironment
from .errors import Kind, ProviderError
from .fetch import ContentOptions, Fetcher, MountResult
from .limits import capped, cut
from .metrics import Metrics
from .parameters import PARSED_OBJECTS, parse_mount

# Requests larger than this are parsed in a worker thread, so that the event loop (other
# mounts, the gRPC health check behind /healthz) keeps answering while a big one is parsed.
PARSE_INLINE_BYTES = 64 * 1024

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


class ProviderServicer(provider_pb2_grpc.CSIDriverProviderServicer):  # type: ignore[misc]
    def __init__(self, provider: Provider, metrics: Metrics) -> None:
        self.provider = provider
        self.metrics = metrics

    async def Version(
        self, request: provider_pb2.VersionRequest, context: grpc.aio.ServicerContext
    ) -> provider_pb2.VersionResponse:
        self.metrics.observe_grpc("/v1alpha1.CSIDriverProvider/Version", "OK", "", 0.0)
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
            result = await self.provider.mount(
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
        self.metrics.observe_grpc(method, name, label, seconds)
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


def healthz_app(healthz_path: str, socket_path: str, timeout: float) -> web.Application:
    async def healthz(_: web.Request) -> web.Response:
        try:
            await check_health(socket_path, timeout)
        except Exception as exc:  # any failure is "unhealthy"
            return web.Response(status=503, text=f"{type(exc).__name__}\n")
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_get(healthz_path, healthz)
    return app


def metrics_app(metrics: Metrics) -> web.Application:
    async def metrics_handler(_: web.Request) -> web.Response:
        return web.Response(body=metrics.exposition(), content_type="text/plain", charset="utf-8")

    app = web.Application()
    app.router.add_get("/metrics", metrics_handler)
    return app
