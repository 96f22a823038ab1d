"""NodePublishVolume / NodeUnpublishVolume, in upstream's order with upstream's messages.

Plain Python: takes a PublishRequest, raises errors.DriverError subclasses; servicers.py maps
those to gRPC codes. Operations on one target path are serialized (a concurrent one is
refused, as the CSI spec asks); different target paths run in parallel.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import posixpath
import shutil
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from typing import Any

from lightkube import AsyncClient

from . import atomic_writer, mounter
from .errors import (
    FAILED_TO_ENSURE_MOUNT_POINT,
    FAILED_TO_MOUNT,
    FILE_WRITE_ERROR,
    SPC_NOT_FOUND,
    DriverError,
    InvalidRequest,
    KubeError,
    OperationPending,
    ProviderError,
    PublishFailed,
    TargetPathError,
)
from .kube import SpcSource, api_error_text, is_forbidden
from .metrics import Metrics
from .provider_client import ProviderClients
from .spcps import PodStatusRecord, create_or_update, list_for_node

log = logging.getLogger(__name__)

POD_NAME = "csi.storage.k8s.io/pod.name"
POD_NAMESPACE = "csi.storage.k8s.io/pod.namespace"
POD_UID = "csi.storage.k8s.io/pod.uid"
POD_SA_NAME = "csi.storage.k8s.io/serviceAccount.name"
SA_TOKENS = "csi.storage.k8s.io/serviceAccount.tokens"
SPC_FIELD = "secretProviderClass"
FILE_PERMISSION = 0o644


@dataclass(frozen=True)
class PublishRequest:
    volume_id: str
    target_path: str
    has_capability: bool
    readonly: bool
    volume_context: Mapping[str, str]
    secrets: Mapping[str, str] = field(repr=False)


def _key(target: str) -> str:
    """Target paths compare after lexical normalisation (no filesystem access)."""
    return posixpath.normpath(target)


def go_json(value: Any) -> str:
    """json.Marshal's output: sorted keys, no spaces, HTML-safe escapes, `null` for no map."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    for char, escape in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026")):
        text = text.replace(char, escape)
    return text.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")


def build_mount_request(
    spc_parameters: Mapping[str, str],
    volume_context: Mapping[str, str],
    secrets: Mapping[str, str],
) -> tuple[str, str]:
    """The provider's attributes and secrets JSON; publish and rotation both build them here."""
    parameters = dict(spc_parameters)
    parameters.update(volume_context)
    tokens = secrets.get(SA_TOKENS) or volume_context.get(SA_TOKENS, "")
    if tokens:
        parameters[SA_TOKENS] = tokens
    return go_json(parameters), go_json(dict(secrets) if secrets else None)


class NodeService:
    def __init__(
        self,
        *,
        node_id: str,
        providers: ProviderClients,
        spcs: SpcSource,
        client: AsyncClient | None,
        metrics: Metrics,
        tmpfs_size: int,
        rotation_enabled: bool = False,
        use_tmpfs: bool = True,
        record_status: bool = True,
    ) -> None:
        self.node_id = node_id
        self.providers = providers
        self.spcs = spcs
        self.client = client
        self.metrics = metrics
        self.tmpfs_size = tmpfs_size
        # False only in standalone mode without root: files go into the (private) directory.
        self.use_tmpfs = use_tmpfs
        # False only in standalone mode: no API server, so no SecretProviderClassPodStatus.
        self.record_status = record_status
        self.rotation_enabled = rotation_enabled
        self._busy: set[str] = set()
        # target path → what was mounted there; rebuilt from SPCPS on start.
        self.mounts: dict[str, PodStatusRecord] = {}
        # Called on a publish of an already-mounted target (the rotation issue plugs in here).
        self.on_republish: Callable[[PublishRequest], Awaitable[None]] | None = None
        # Called after a first publish succeeded (secret sync: the Secret before the containers).
        self.on_published: Callable[[PodStatusRecord], Awaitable[None]] | None = None

    @contextmanager
    def _exclusive(self, target: str) -> Iterator[None]:
        key = _key(target)
        if key in self._busy:
            raise OperationPending(f"an operation on target path {target} is already in progress")
        self._busy.add(key)
        try:
            yield
        finally:
            self._busy.discard(key)

    # ---- publish ---------------------------------------------------------------------------

    async def publish(self, req: PublishRequest) -> None:
        provider = req.volume_context.get("providerName", "") if req.volume_context else ""
        state = {"provider": provider, "error_type": FAILED_TO_MOUNT}
        try:
            await self._publish(req, state)
        except DriverError as e:
            self.metrics.publish_error(state["provider"], e.error_type)
            raise
        except Exception as e:
            self.metrics.publish_error(state["provider"], FAILED_TO_MOUNT)
            raise PublishFailed(f"{type(e).__name__}: {e}") from e
        self.metrics.publish_ok(state["provider"])

    async def _publish(self, req: PublishRequest, state: dict[str, str]) -> None:
        if not req.has_capability:
            raise InvalidRequest("Volume capability missing in request")
        if not req.volume_id:
            raise InvalidRequest("Volume ID missing in request")
        if not req.target_path:
            raise InvalidRequest("Target path missing in request")
        if not req.volume_context:
            raise InvalidRequest("Volume attributes missing in request")
        target = req.target_path
        with self._exclusive(target):
            if await asyncio.to_thread(self._ensure_mount_point, target):
                log.info("target path is already mounted: %s", target)
                if self.on_republish is not None:
                    await self.on_republish(req)
                return
            await self._first_publish(req, state)

    def _ensure_mount_point(self, target: str) -> bool:
        """True if target is already a mount; creates it (0750) when missing, as kubelet expects."""
        try:
            if os.path.islink(target):
                raise TargetPathError(
                    f"failed to check if target path {target} is mount point, "
                    "err: target is a symlink",
                    FAILED_TO_ENSURE_MOUNT_POINT,
                )
            if not os.path.isdir(target):
                if os.path.lexists(target):
                    raise TargetPathError(
                        f"failed to check if target path {target} is mount point, "
                        "err: not a directory",
                        FAILED_TO_ENSURE_MOUNT_POINT,
                    )
                raise FileNotFoundError(target)
            if not mounter.is_mount_point(target):
                return False
            try:
                os.listdir(target)
                return True
            except OSError:  # a dead mount: unmount and publish afresh
                mounter.unmount(target)
                return False
        except FileNotFoundError:
            try:
                os.makedirs(target, mode=0o750, exist_ok=True)
            except OSError as e:
                raise TargetPathError(
                    f"failed to create target path {target}, err: {e.strerror}"
                ) from None
            return False
        except OSError as e:
            raise TargetPathError(
                f"failed to check if target path {target} is mount point, err: {e.strerror}",
                FAILED_TO_ENSURE_MOUNT_POINT,
            ) from None

    async def _first_publish(self, req: PublishRequest, state: dict[str, str]) -> None:
        attrib = dict(req.volume_context)
        target = req.target_path
        pod_name = attrib.get(POD_NAME, "")
        pod_ns = attrib.get(POD_NAMESPACE, "")
        pod_uid = attrib.get(POD_UID, "")
        spc_name = attrib.get(SPC_FIELD, "")
        if not spc_name:
            raise PublishFailed("secretProviderClass is not set")
        try:
            spc = await self.spcs.get(pod_ns, spc_name)
        except KubeError as e:
            raise PublishFailed(
                f"failed to get secretproviderclass {pod_ns}/{spc_name}, error: {e}", SPC_NOT_FOUND
            ) from None
        if not spc.provider:
            raise PublishFailed(f"provider not set in {pod_ns}/{spc_name}")
        state["provider"] = spc.provider
        if not spc.parameters:
            raise PublishFailed(f"parameters not set in {pod_ns}/{spc_name}")
        if not req.readonly:
            raise InvalidRequest("Readonly is not true in request")

        attributes, secrets = build_mount_request(spc.parameters, attrib, req.secrets)
        permission = go_json(FILE_PERMISSION)

        started = time.monotonic()
        try:
            if self.use_tmpfs:
                await asyncio.to_thread(mounter.mount_tmpfs, target, self.tmpfs_size)
        except OSError as e:
            raise PublishFailed(f"failed to mount tmpfs at {target}: {e.strerror}") from None
        try:
            try:
                result = await self.providers.mount(
                    spc.provider, attributes, secrets, target, permission
                )
                try:
                    if result.files:
                        await asyncio.to_thread(self._write, target, result.files)
                except (OSError, atomic_writer.PayloadError) as e:
                    raise ProviderError(str(e), FILE_WRITE_ERROR) from None
            except ProviderError as e:
                state["error_type"] = e.error_type
                raise PublishFailed(
                    f"failed to mount secrets store objects for pod {pod_ns}/{pod_name}, "
                    f"err: {e.message}",
                    e.error_type,
                ) from None
            record = PodStatusRecord(
                pod_name=pod_name,
                namespace=pod_ns,
                pod_uid=pod_uid,
                spc_name=spc_name,
                target_path=target,
                node_id=self.node_id,
                mounted=True,
                objects=result.object_versions,
            )
            try:
                if self.record_status:
                    await create_or_update(self.client, record)
            except KubeError as e:
                raise PublishFailed(
                    "failed to create secret provider class pod status for pod "
                    f"{pod_ns}/{pod_name}, err: {e}"
                ) from None
        except BaseException:
            if not self.use_tmpfs:
                raise  # nothing was mounted; a failed write removed its own directory
            try:
                await asyncio.to_thread(mounter.unmount, target)
                log.info("unmounted target path %s as node publish volume failed", target)
            except OSError as e:
                log.error("failed to unmount target path %s: %s", target, e.strerror)
            raise
        self.mounts[_key(target)] = record
        if self.on_published is not None:
            await self.on_published(record)
        log.info(
            "node publish volume complete: target=%s pod=%s/%s time=%.3fs",
            target,
            pod_ns,
            pod_name,
            time.monotonic() - started,
        )

    @staticmethod
    def _write(target: str, files: Mapping[str, atomic_writer.FileProjection]) -> None:
        atomic_writer.cleanup_provider_files(target, files)
        atomic_writer.write(target, files)

    # ---- unpublish -------------------------------------------------------------------------

    async def unpublish(self, volume_id: str, target_path: str) -> None:
        try:
            if not volume_id:
                raise InvalidRequest("Volume ID missing in request")
            if not target_path:
                raise InvalidRequest("Target path missing in request")
            with self._exclusive(target_path):
                await asyncio.to_thread(self._cleanup, target_path)
                self.mounts.pop(_key(target_path), None)
        except DriverError:
            self.metrics.unpublish_error()
            raise
        except Exception as e:
            self.metrics.unpublish_error()
            raise TargetPathError(f"{type(e).__name__}: {e}") from e
        self.metrics.unpublish_ok()
        log.info("node unpublish volume complete: target=%s", target_path)

    @staticmethod
    def _cleanup(target: str) -> None:
        """Remove content, unmount, remove the directory; never follow a symlink out of it."""
        if not os.path.lexists(target):
            return
        if os.path.islink(target) or not os.path.isdir(target):
            os.unlink(target)
            return
        try:
            mounted = mounter.is_mount_point(target)
        except OSError:
            mounted = True  # e.g. a dead mount: try to unmount below
        try:
            entries = os.listdir(target)
        except OSError:
            entries = []
        for entry in entries:
            path = os.path.join(target, entry)
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path, ignore_errors=True)
            else:
                with suppress(FileNotFoundError):
                    os.unlink(path)
        if mounted:
            try:
                mounter.unmount(target)
            except OSError as e:
                raise TargetPathError(f"failed to unmount {target}: {e.strerror}") from None
        if mounter.is_mount_point(target):
            raise TargetPathError(f"target path {target} is still mounted")
        try:
            os.rmdir(target)
        except FileNotFoundError:
            pass
        except OSError as e:
            raise TargetPathError(f"failed to remove target path {target}: {e.strerror}") from None

    # ---- restart ---------------------------------------------------------------------------

    async def recover(self) -> int:
        """Find this node's existing mounts again from its SPCPS; returns how many."""
        if self.client is None or not self.node_id:
            return 0
        try:
            records = await list_for_node(self.client, self.node_id)
        except Exception as e:
            log.log(
                logging.ERROR if is_forbidden(e) else logging.WARNING,
                "could not list this node's secretproviderclasspodstatuses, so mounts made "
                "before this start are not rotated or synced: %s",
                api_error_text(e),
            )
            return 0
        found = 0
        for record in records:
            target = record.target_path
            try:
                mounted = bool(target) and await asyncio.to_thread(mounter.is_mount_point, target)
            except OSError:
                mounted = False
            if mounted:
                self.mounts[_key(target)] = record
                found += 1
        log.info("recovered %d existing mounts on node %s", found, self.node_id)
        return found
