"""gRPC transport: protobuf in, plain Python out, and the one place errors become codes."""

from __future__ import annotations

import logging
from collections.abc import Awaitable
from typing import TypeVar

import grpc
from google.protobuf import wrappers_pb2  # type: ignore[import-untyped]
from grpc import aio

from secrets_store_api import csi_pb2, csi_pb2_grpc

from .errors import DriverError, InvalidRequest, OperationPending, TargetPathError
from .node import NodeService
from .volumes import PublishRequest

log = logging.getLogger(__name__)
T = TypeVar("T")

_CODES: list[tuple[type[DriverError], grpc.StatusCode]] = [
    (InvalidRequest, grpc.StatusCode.INVALID_ARGUMENT),
    (OperationPending, grpc.StatusCode.ABORTED),
    (TargetPathError, grpc.StatusCode.INTERNAL),
]


async def _call(context: aio.ServicerContext, op: str, coro: Awaitable[T]) -> T:
    """Run a domain call; map its DriverError to the gRPC status (Unknown, as upstream, else)."""
    try:
        return await coro
    except DriverError as e:
        code = next((c for cls, c in _CODES if isinstance(e, cls)), grpc.StatusCode.UNKNOWN)
        log.error("%s failed: %s (%s)", op, e.message, code.name)
        await context.abort(code, e.message)
        raise  # abort raises; this is for type checkers


class IdentityServicer(csi_pb2_grpc.IdentityServicer):  # type: ignore[misc]
    def __init__(self, name: str, version: str) -> None:
        self.name = name
        self.version = version

    async def GetPluginInfo(
        self, request: csi_pb2.GetPluginInfoRequest, context: aio.ServicerContext
    ) -> csi_pb2.GetPluginInfoResponse:
        if not self.name:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "driver name not configured")
        if not self.version:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "driver version not configured")
        return csi_pb2.GetPluginInfoResponse(name=self.name, vendor_version=self.version)

    async def GetPluginCapabilities(
        self, request: csi_pb2.GetPluginCapabilitiesRequest, context: aio.ServicerContext
    ) -> csi_pb2.GetPluginCapabilitiesResponse:
        # No CONTROLLER_SERVICE: a node plugin for ephemeral volumes needs none (upstream
        # advertises it and answers Unimplemented everywhere).
        return csi_pb2.GetPluginCapabilitiesResponse()

    async def Probe(
        self, request: csi_pb2.ProbeRequest, context: aio.ServicerContext
    ) -> csi_pb2.ProbeResponse:
        return csi_pb2.ProbeResponse(ready=wrappers_pb2.BoolValue(value=True))


_MOUNT_GROUP = csi_pb2.NodeServiceCapability(
    rpc=csi_pb2.NodeServiceCapability.RPC(type=csi_pb2.NodeServiceCapability.RPC.VOLUME_MOUNT_GROUP)
)


class NodeServicer(csi_pb2_grpc.NodeServicer):  # type: ignore[misc]
    def __init__(self, service: NodeService) -> None:
        self.service = service

    async def NodePublishVolume(
        self, request: csi_pb2.NodePublishVolumeRequest, context: aio.ServicerContext
    ) -> csi_pb2.NodePublishVolumeResponse:
        req = PublishRequest(
            volume_id=request.volume_id,
            target_path=request.target_path,
            has_capability=request.HasField("volume_capability"),
            readonly=request.readonly,
            volume_context=dict(request.volume_context),
            secrets=dict(request.secrets),
            volume_mount_group=request.volume_capability.mount.volume_mount_group,
        )
        await _call(context, "NodePublishVolume", self.service.publish(req))
        return csi_pb2.NodePublishVolumeResponse()

    async def NodeUnpublishVolume(
        self, request: csi_pb2.NodeUnpublishVolumeRequest, context: aio.ServicerContext
    ) -> csi_pb2.NodeUnpublishVolumeResponse:
        await _call(
            context,
            "NodeUnpublishVolume",
            self.service.unpublish(request.volume_id, request.target_path),
        )
        return csi_pb2.NodeUnpublishVolumeResponse()

    async def NodeStageVolume(
        self, request: csi_pb2.NodeStageVolumeRequest, context: aio.ServicerContext
    ) -> csi_pb2.NodeStageVolumeResponse:
        # Not advertised (ephemeral volumes are never staged); argument checks as upstream.
        if not request.volume_id:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "Volume ID missing in request")
        if not request.staging_target_path:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "Target path missing in request")
        if not request.HasField("volume_capability"):
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, "Volume capability missing in request"
            )
        return csi_pb2.NodeStageVolumeResponse()

    async def NodeUnstageVolume(
        self, request: csi_pb2.NodeUnstageVolumeRequest, context: aio.ServicerContext
    ) -> csi_pb2.NodeUnstageVolumeResponse:
        if not request.volume_id:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "Volume ID missing in request")
        if not request.staging_target_path:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "Target path missing in request")
        return csi_pb2.NodeUnstageVolumeResponse()

    async def NodeGetVolumeStats(
        self, request: csi_pb2.NodeGetVolumeStatsRequest, context: aio.ServicerContext
    ) -> csi_pb2.NodeGetVolumeStatsResponse:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "NodeGetVolumeStats is not implemented")
        raise AssertionError("unreachable")

    async def NodeExpandVolume(
        self, request: csi_pb2.NodeExpandVolumeRequest, context: aio.ServicerContext
    ) -> csi_pb2.NodeExpandVolumeResponse:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "NodeExpandVolume is not implemented")
        raise AssertionError("unreachable")

    async def NodeGetCapabilities(
        self, request: csi_pb2.NodeGetCapabilitiesRequest, context: aio.ServicerContext
    ) -> csi_pb2.NodeGetCapabilitiesResponse:
        # VOLUME_MOUNT_GROUP: with the CSIDriver's fsGroupPolicy File, kubelet sends the pod's
        # fsGroup in volume_capability.mount.volume_mount_group (and does not chown itself)
        return csi_pb2.NodeGetCapabilitiesResponse(capabilities=[_MOUNT_GROUP])

    async def NodeGetInfo(
        self, request: csi_pb2.NodeGetInfoRequest, context: aio.ServicerContext
    ) -> csi_pb2.NodeGetInfoResponse:
        return csi_pb2.NodeGetInfoResponse(node_id=self.service.node_id)
