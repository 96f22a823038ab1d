# Over 400 lines: publish and unpublish are one flow (plan, share, mount, write, record, undo).
"""NodePublishVolume / NodeUnpublishVolume, in upstream's order with upstream's messages.

Plain Python: takes a PublishRequest, raises errors.DriverError subclasses; servicers.py maps
those to gRPC codes. Operations on one target path are serialized through the mount table's
lock (a concurrent one is refused, as the CSI spec asks); different target paths run in
parallel. Concurrent first publishes whose share keys are equal (sharing.py: same SPC, namespace,
service account, nodePublishSecretRef data and attributes) share one provider call in flight;
each still mounts, writes and records its own target (`--publish-share-provider-calls`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import time
from collections.abc import Awaitable, Callable
from contextlib import suppress
from functools import partial

from lightkube import AsyncClient

from . import atomic_writer, mounter
from .errors import (
    FAILED_TO_ENSURE_MOUNT_POINT,
    FAILED_TO_MOUNT,
    FILE_WRITE_ERROR,
    DriverError,
    InvalidRequest,
    KubeError,
    ProviderError,
    PublishFailed,
    TargetPathError,
)
from .events import PodRef
from .heap import HeapTrim
from .kube import SecretProviderClassSpec, SpcSource, api_error_text, get_spc, is_forbidden
from .metrics import OS_TYPE, Metrics
from .mounts import MountTable
from .provider_client import MountResult, ProviderClients
from .provider_wait import ProviderWait
from .sharing import ShareKey, share_key
from .single_flight import SingleFlight
from .spcps import PodStatusRecord, StatusWriter, list_for_node
from .volumes import (
    FILE_PERMISSION,
    POD_NAME,
    POD_NAMESPACE,
    POD_SA_NAME,
    POD_UID,
    SPC_FIELD,
    PublishRequest,
    build_mount_request,
    go_json,
    mount_group,
)

log = logging.getLogger(__name__)


def _check_arguments(req: PublishRequest) -> None:
    if not req.has_capability:
        raise InvalidRequest("Volume capability missing in request")
    if not req.volume_id:
        raise InvalidRequest("Volume ID missing in request")
    if not req.target_path:
        raise InvalidRequest("Target path missing in request")
    if not req.volume_context:
        raise InvalidRequest("Volume attributes missing in request")
    mount_group(req.volume_mount_group)  # this driver's: the pod's fsGroup, checked first


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
        status: StatusWriter,
        mounts: MountTable | None = None,
        use_tmpfs: bool = True,
        on_published: Callable[[PodStatusRecord], Awaitable[None]] | None = None,
        on_republish: Callable[[PublishRequest], Awaitable[None]] | None = None,
        provider_wait: ProviderWait | None = None,
        share: bool = True,
        heap: HeapTrim | None = None,
    ) -> None:
        self.node_id = node_id
        self.providers = providers
        self.spcs = spcs
        self.client = client  # only to find this node's mounts again on start
        self.metrics = metrics
        self.tmpfs_size = tmpfs_size
        self.status = status
        # False only in standalone mode without root: files go into the (private) directory.
        self.use_tmpfs = use_tmpfs
        self.mounts = MountTable() if mounts is None else mounts
        # A first publish succeeded (secret sync: the Secret before the containers start).
        self.on_published = on_published
        # A publish of an already-mounted target (kubelet's requiresRepublish; rotation).
        self.on_republish = on_republish
        # a missing provider: wait for it (default: not at all)
        self.provider_wait = provider_wait or ProviderWait(providers, timeout=0, metrics=metrics)
        # one provider call in flight per share key (None: every publish calls alone)
        self.flights: SingleFlight[ShareKey, MountResult] | None = SingleFlight() if share else None
        # freed heap back to the OS after a burst (heap.py)
        self.heap = HeapTrim() if heap is None else heap

    # ---- publish ---------------------------------------------------------------------------

    async def publish(self, req: PublishRequest) -> None:
        with self.heap.busy():
            await self._publish(req)

    async def _publish(self, req: PublishRequest) -> None:
        # the metric's provider label: the volume context's until the SPC says
        provider = req.volume_context.get("providerName", "") if req.volume_context else ""
        try:
            _check_arguments(req)
            target = req.target_path
            with self.mounts.lock(target):
                if await asyncio.to_thread(self._ensure_mount_point, target):
                    log.info("target path is already mounted: %s", target)
                    if self.on_republish is not None:
                        await self.on_republish(req)
                else:
                    spc = await self._spc(req)
                    provider = spc.provider
                    await self._first_publish(req, spc)
        except DriverError as e:
            self.metrics.publish_error(provider, e.error_type)
            raise
        except Exception as e:
            self.metrics.publish_error(provider, FAILED_TO_MOUNT)
            raise PublishFailed(f"{type(e).__name__}: {e}") from e
        self.metrics.publish_ok(provider)

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
            return self._live_mount(target)
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

    @staticmethod
    def _live_mount(target: str) -> bool:
        if not mounter.is_mount_point(target):
            return False
        try:
            os.listdir(target)
            return True
        except OSError:  # a dead mount: unmount and publish afresh
            mounter.unmount(target)
            return False

    async def _spc(self, req: PublishRequest) -> SecretProviderClassSpec:
        """The volume's SPC, with a provider (upstream's order: before the other checks)."""
        attrib = req.volume_context
        pod_ns, spc_name = attrib.get(POD_NAMESPACE, ""), attrib.get(SPC_FIELD, "")
        if not spc_name:
            raise PublishFailed("secretProviderClass is not set")
        spc = await get_spc(self.spcs, pod_ns, spc_name, PublishFailed)
        if not spc.provider:
            raise PublishFailed(f"provider not set in {pod_ns}/{spc_name}")
        return spc

    async def _first_publish(self, req: PublishRequest, spc: SecretProviderClassSpec) -> None:
        attrib = req.volume_context
        target = req.target_path
        pod_ns = attrib.get(POD_NAMESPACE, "")
        if not spc.parameters:
            raise PublishFailed(f"parameters not set in {pod_ns}/{spc.name}")
        if not req.readonly:
            raise InvalidRequest("Readonly is not true in request")
        started = time.monotonic()
        if self.use_tmpfs:
            try:
                await asyncio.to_thread(
                    mounter.mount_tmpfs,
                    target,
                    self.tmpfs_size,
                    mount_group(req.volume_mount_group),
                )
            except OSError as e:
                raise PublishFailed(f"failed to mount tmpfs at {target}: {e.strerror}") from None
        try:
            record = await self._fill(req, spc)
        except BaseException:
            await self._roll_back(target)
            raise
        self.mounts.add(record, mount_group(req.volume_mount_group))
        if self.on_published is not None:
            await self.on_published(record)
        log.info(
            "node publish volume complete: target=%s pod=%s/%s fsGroup=%s time=%.3fs",
            target,
            pod_ns,
            attrib.get(POD_NAME, ""),
            req.volume_mount_group or "none",  # kubelet's volume_mount_group, as received
            time.monotonic() - started,
        )

    async def _fill(self, req: PublishRequest, spc: SecretProviderClassSpec) -> PodStatusRecord:
        """The provider's files into the mounted target, then the SPCPS."""
        attrib = req.volume_context
        pod_ns, pod_name = attrib.get(POD_NAMESPACE, ""), attrib.get(POD_NAME, "")
        try:
            result = await self._mount_and_write(req, spc)
        except ProviderError as e:
            raise PublishFailed(
                f"failed to mount secrets store objects for pod {pod_ns}/{pod_name}, "
                f"err: {e.message}",
                e.error_type,
            ) from None
        record = PodStatusRecord(
            pod_name=pod_name,
            namespace=pod_ns,
            pod_uid=attrib.get(POD_UID, ""),
            spc_name=spc.name,
            target_path=req.target_path,
            node_id=self.node_id,
            mounted=True,
            objects=result.object_versions,
        )
        try:
            await self.status.write(record)
        except KubeError as e:
            raise PublishFailed(
                "failed to create secret provider class pod status for pod "
                f"{pod_ns}/{pod_name}, err: {e}"
            ) from None
        return record

    async def _mount_and_write(
        self, req: PublishRequest, spc: SecretProviderClassSpec
    ) -> MountResult:
        attributes, secrets = build_mount_request(spc.parameters, req.volume_context, req.secrets)
        target = req.target_path
        attrib = req.volume_context
        pod = PodRef(
            attrib.get(POD_NAME, ""), attrib.get(POD_NAMESPACE, ""), attrib.get(POD_UID, "")
        )
        call = partial(
            self.provider_wait.mount,
            spc.provider,
            pod,
            attributes,
            secrets,
            target,
            go_json(FILE_PERMISSION),
        )
        result = await self._shared(spc.provider, _publish_key(req, spc), call)
        try:
            if result.files:
                group = mount_group(req.volume_mount_group)
                await asyncio.to_thread(atomic_writer.replace, target, result.files, group)
        except (OSError, atomic_writer.PayloadError) as e:
            raise ProviderError(str(e), FILE_WRITE_ERROR) from None
        return result

    async def _shared(
        self, provider: str, key: ShareKey | None, call: Callable[[], Awaitable[MountResult]]
    ) -> MountResult:
        """The publish's provider call, or the same key's call in flight. A provider that
        answers without files writes into the target itself: then each publish calls alone."""
        if self.flights is None or key is None:
            return await call()
        result, shared = await self.flights.run(key, call)
        if not shared:
            return result
        if not result.files:
            return await call()
        self.metrics.publish_calls_saved.labels(provider, OS_TYPE).inc()
        return result

    async def _roll_back(self, target: str) -> None:
        """A first publish failed: nothing stays mounted."""
        if not self.use_tmpfs:
            return  # nothing was mounted; a failed write removed its own directory
        try:
            await asyncio.to_thread(mounter.unmount, target)
            log.info("unmounted target path %s as node publish volume failed", target)
        except OSError as e:
            log.error("failed to unmount target path %s: %s", target, e.strerror)

    # ---- unpublish -------------------------------------------------------------------------

    async def unpublish(self, volume_id: str, target_path: str) -> None:
        with self.heap.busy():
            await self._unpublish(volume_id, target_path)

    async def _unpublish(self, volume_id: str, target_path: str) -> None:
        try:
            if not volume_id:
                raise InvalidRequest("Volume ID missing in request")
            if not target_path:
                raise InvalidRequest("Target path missing in request")
            with self.mounts.lock(target_path):
                await asyncio.to_thread(self._cleanup, target_path)
                self.mounts.remove(target_path)
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
        _remove_entries(target)
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
            if mounted:  # the fsGroup a publish gave it is in the tmpfs's gid= option
                self.mounts.add(record, await asyncio.to_thread(mounter.mount_group, target))
                found += 1
        log.info("recovered %d existing mounts on node %s", found, self.node_id)
        return found


def _publish_key(req: PublishRequest, spc: SecretProviderClassSpec) -> ShareKey | None:
    attrib = req.volume_context
    return share_key(
        namespace=attrib.get(POD_NAMESPACE, ""),
        spc_name=spc.name,
        provider=spc.provider,
        parameters=spc.parameters,
        volume_context=attrib,
        secrets=req.secrets,
        service_account=attrib.get(POD_SA_NAME, ""),
    )


def _remove_entries(target: str) -> None:
    """Everything inside target (payload dirs, `..data`, the user-visible links)."""
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
