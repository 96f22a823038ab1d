"""Mirrors SecretProviderClass `spec.secretObjects` into Kubernetes Secrets: the controller.

Triggered by this node's SecretProviderClassPodStatus objects (a watch, label filter), by its
Pods (a watch, field selector), and right after a first publish (so the Secret exists before
the pod's containers start). No timer: an idle cluster costs no write and no read.

Watches fill small caches and a queue of SPCPS keys; a worker reconciles one SPCPS at a time:
the Secrets' data from the mounted files (secret_objects), each Secret ensured by the writer
(secret_writer), every failure a Warning event on the pod (events). Owners are the pod's
controllers (or, for a bare pod, its SPCPS), so garbage collection removes the Secret after
the last consumer.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any, cast

from lightkube import ApiError, AsyncClient
from lightkube.resources.core_v1 import Pod, Secret

from . import DRIVER_NAME, mounter
from .events import EventRecorder, PodRef
from .kube import (
    NODE_LABEL,
    SecretProviderClass,
    SecretProviderClassPodStatus,
    api_error_text,
    is_forbidden,
    missing_verbs,
    to_dict,
    watch_forever,
)
from .metrics import Metrics
from .mounts import MountTable
from .secret_objects import SecretObject, SyncError, build_data, owners_for, parse_secret_objects
from .secret_writer import MANAGED_LABEL, Outcome, Result, SecretWriter
from .spcps import PodStatusRecord
from .sync_index import Key, SyncIndex
from .volumes import csi_volume, parse_target, pod_finished

log = logging.getLogger(__name__)

COMPONENT = "csi-secrets-store-controller"
FAILED_TO_CREATE = "FailedToCreateSecret"  # upstream's reason
TYPE_CHANGED = "SecretTypeChanged"
WATCH_FORBIDDEN = "SecretSyncWatchForbidden"
RBAC_HINT = (
    "the driver's ServiceAccount needs the secretprovidersyncing-role ClusterRole and its "
    "binding (daemonset/rbac.yaml: secrets create, get, watch, update, delete)"
)

Handler = Callable[[str, dict[str, Any]], list[Key]]  # a watch event → the SPCPS now due


def _pod_ref(pod: Pod) -> PodRef:
    meta = pod.metadata
    if meta is None:
        return PodRef("", "", "")
    return PodRef(meta.name or "", meta.namespace or "", meta.uid or "")


class SecretSync:
    """The sync controller of one node."""

    def __init__(
        self,
        client: AsyncClient,
        node_id: str,
        metrics: Metrics,
        mounts: MountTable | None = None,
    ) -> None:
        self.client = client
        self.node_id = node_id
        self.metrics = metrics
        self._mounts = mounts  # what this driver mounted (None: trust mount points)
        self.events = EventRecorder(client, COMPONENT, node_id, dedupe=True)
        self.writer = SecretWriter(client)
        self.index = SyncIndex()
        self._queue: asyncio.Queue[Key] = asyncio.Queue()
        self._queued: set[Key] = set()
        self._retry: dict[Key, float] = {}
        self._tasks: list[asyncio.Task[Any]] = []
        # resource → the Forbidden text of its watch: what sync cannot follow (pod events)
        self._watch_denied: dict[str, str] = {}

    # ---- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        if not self.node_id or self._tasks:
            return
        index = self.index
        watches: list[tuple[Any, Handler, dict[str, Any]]] = [
            (SecretProviderClassPodStatus, index.on_spcps, {"labels": {NODE_LABEL: self.node_id}}),
            (Pod, index.on_pod, {"fields": {"spec.nodeName": self.node_id}}),
            (SecretProviderClass, index.on_spc, {}),
            (Secret, index.on_secret, {"labels": {MANAGED_LABEL: "true"}}),
        ]
        names = ("sync-spcps-watch", "sync-pod-watch", "sync-spc-watch", "sync-secret-watch")
        self._tasks = [
            asyncio.create_task(self._watch(res, handler, selectors), name=name)
            for (res, handler, selectors), name in zip(watches, names, strict=True)
        ]
        self._tasks.append(asyncio.create_task(self._worker(), name="sync-worker"))
        self._tasks.append(asyncio.create_task(self.check_rbac(), name="sync-rbac-check"))

    async def check_rbac(self) -> list[str]:
        """The Secret verbs the driver lacks, said once at start (one review per verb)."""
        missing = await missing_verbs(self.client, "secrets", ("get", "create", "update", "delete"))
        if missing:
            log.error(
                "secret sync is disabled in effect: the driver may not %s secrets; %s",
                "/".join(missing),
                RBAC_HINT,
            )
        return missing

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    # ---- watches → index → queue ----------------------------------------------------------

    async def _watch(self, res: Any, handler: Handler, selectors: dict[str, Any]) -> None:
        name = res.__name__

        def handle(event: str, data: dict[str, Any]) -> None:
            self._watch_denied.pop(name, None)
            for key in handler(event, data):
                self._enqueue(key)

        def denied(e: BaseException, text: str) -> None:
            if is_forbidden(e):
                # not a blip: what this watch triggers (a deleted Secret coming back, an
                # SPC edit, a pod adopted) will not happen until RBAC is fixed
                self._watch_denied[name] = text

        await watch_forever(
            self.client, res, handle, what=f"secret sync: {name}", on_error=denied, **selectors
        )

    def _enqueue(self, key: Key) -> None:
        if key not in self._queued:
            self._queued.add(key)
            self._queue.put_nowait(key)

    async def _worker(self) -> None:
        while True:
            key = await self._queue.get()
            self._queued.discard(key)
            spcps = self.index.spcps(key)
            if spcps is None:
                continue
            try:
                retry = await self.reconcile(spcps)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("secret sync of %s/%s failed", *key)
                retry = True
            if retry:
                delay = min(self._retry.get(key, 0.5) * 2, 300.0)
                self._retry[key] = delay
                asyncio.get_running_loop().call_later(delay, self._requeue, key)
            else:
                self._retry.pop(key, None)

    def _requeue(self, key: Key) -> None:
        if self.index.spcps(key) is not None:
            self._enqueue(key)

    # ---- after a publish -------------------------------------------------------------------

    async def sync_now(self, record: PodStatusRecord) -> None:
        """After a first publish: sync before the pod's containers start. Never raises."""
        if not self.index.wants_sync(record.namespace, record.spc_name):
            return
        try:
            async with asyncio.timeout(10):
                await self._sync_record(record)
        except Exception as e:
            text = api_error_text(e)
            if not is_forbidden(e):
                log.warning(
                    "secret sync after publish of %s/%s: %s (the watch will retry)",
                    record.namespace,
                    record.pod_name,
                    text,
                )
                return
            await self.events.record(
                PodRef(record.pod_name, record.namespace, record.pod_uid),
                "Warning",
                FAILED_TO_CREATE,
                f"failed to sync secretObjects: {text}",
            )

    async def _sync_record(self, record: PodStatusRecord) -> None:
        ns = record.namespace
        spcps, spc, pod = await asyncio.gather(  # one round trip, not three
            self._get(SecretProviderClassPodStatus, record.name, ns),
            self._get(SecretProviderClass, record.spc_name, ns),
            self._get_pod(record.pod_name, ns),
            return_exceptions=True,
        )
        if isinstance(spc, dict) and not (spc.get("spec") or {}).get("secretObjects"):
            return  # nothing to sync: a failed read of the others does not matter
        for answer in (spcps, spc, pod):
            if isinstance(answer, BaseException):
                raise answer
        if isinstance(spcps, dict):
            await self.reconcile(spcps, (cast(dict[str, Any] | None, spc), cast(Pod | None, pod)))

    # ---- one SPCPS -------------------------------------------------------------------------

    async def _get(self, res: Any, name: str, namespace: str) -> dict[str, Any] | None:
        """The object as a dict; None if it does not exist."""
        try:
            return to_dict(await self.client.get(res, name, namespace=namespace))
        except ApiError as e:
            if e.status.code == 404:
                return None
            raise

    async def _get_pod(self, name: str, namespace: str) -> Pod | None:
        try:
            return await self.client.get(Pod, name, namespace=namespace)
        except ApiError as e:
            if e.status.code == 404:
                return None
            raise

    async def _fetch(
        self, ns: str, spc_name: str, pod_name: str
    ) -> tuple[dict[str, Any] | None, Pod | None] | None:
        """The SPC and the pod, read now (one just deleted must not come back); None when the
        API server could not answer (retry later)."""
        try:
            spc, pod = await asyncio.gather(
                self._get(SecretProviderClass, spc_name, ns), self._get_pod(pod_name, ns)
            )
        except ApiError as e:
            log.log(
                logging.ERROR if is_forbidden(e) else logging.WARNING,
                "secret sync of pod %s/%s: %s",
                ns,
                pod_name,
                api_error_text(e),
            )
            return None
        return spc, pod

    async def reconcile(
        self,
        spcps: Mapping[str, Any],
        fetched: tuple[dict[str, Any] | None, Pod | None] | None = None,
    ) -> bool:
        """Sync every secretObject of one mount; True when a transient failure wants a retry.

        `fetched`: its SPC and pod, when the caller already read them.
        """
        meta = spcps.get("metadata") or {}
        status = spcps.get("status") or {}
        ns = str(meta.get("namespace", ""))
        if (meta.get("labels") or {}).get(NODE_LABEL) != self.node_id or meta.get(
            "deletionTimestamp"
        ):
            return False
        pod_name = str(status.get("podName", ""))
        spc_name = str(status.get("secretProviderClassName", ""))
        if not self.index.wants_sync(ns, spc_name):
            return False
        if fetched is None:
            fetched = await self._fetch(ns, spc_name, pod_name)
            if fetched is None:
                return True
        spc, pod = fetched
        if spc is None or pod is None or not (spc.get("spec") or {}).get("secretObjects"):
            return False
        if pod_finished(pod):
            return False
        target = str(status.get("targetPath", ""))
        if not await self._check(pod, spc_name, target):
            return False
        return await self._sync_objects(pod, spc, spcps, target)

    async def _check(self, pod: Pod, spc_name: str, target: str) -> bool:
        """The SPCPS names this pod's volume, mounted here; else a Warning event."""
        problem = self._target_problem(pod, spc_name, target)
        if not problem and not await self._mounted_here(target):
            ref = _pod_ref(pod)
            problem = (
                f"target path of pod {ref.namespace}/{ref.name} is not a volume mounted on this "
                "node"
            )
        if problem:
            log.warning("secret sync: %s", problem)
            await self.events.record(_pod_ref(pod), "Warning", FAILED_TO_CREATE, problem)
            return False
        return True

    async def _sync_objects(
        self, pod: Pod, spc: Mapping[str, Any], spcps: Mapping[str, Any], target: str
    ) -> bool:
        ref = _pod_ref(pod)
        spc_name = str((spcps.get("status") or {}).get("secretProviderClassName", ""))
        for resource, text in sorted(self._watch_denied.items()):
            await self.events.record(
                ref,
                "Warning",
                WATCH_FORBIDDEN,
                f"secret sync cannot watch {resource} objects, so changes after this mount are "
                f"not followed: {text}",
            )
        objects, errors = parse_secret_objects(spc)
        warnings = self.events.warnings(ref.uid)
        for message in errors:
            await self.events.record(ref, "Warning", FAILED_TO_CREATE, message)
        owners = owners_for(pod, spcps)
        provider = str((spc.get("spec") or {}).get("provider") or "")
        retry = False
        for obj in objects:
            try:
                data = await asyncio.to_thread(build_data, obj, target)
            except SyncError as e:
                await self.events.record(
                    ref,
                    "Warning",
                    FAILED_TO_CREATE,
                    f"failed to get data in spc {ref.namespace}/{spc_name} for secret "
                    f"{obj.secret_name}, err: {e}",
                )
                continue
            started = time.monotonic()
            outcome = await self.writer.ensure(ref.namespace, obj, data, owners)
            await self._report(ref, obj, outcome)
            if outcome.written:
                self.metrics.secret_synced(provider, time.monotonic() - started)
            retry |= outcome.retry
        if not retry and self.events.warnings(ref.uid) == warnings:
            self.events.forget(ref.uid)  # all good: a failure that comes back is said again
        return retry

    async def _report(self, ref: PodRef, obj: SecretObject, outcome: Outcome) -> None:
        """Say what the writer did, where users look: the pod's events."""
        where = f"{ref.namespace}/{obj.secret_name}"
        if outcome.result is Result.NOT_MANAGED:
            message = (
                f"Secret {where} exists and is not managed by the driver (no label "
                f"{MANAGED_LABEL}=true): it is left as it is; rename secretName or delete that "
                "Secret"
            )
            await self.events.record(ref, "Warning", FAILED_TO_CREATE, message)
        elif outcome.result is Result.TYPE_CHANGED:
            message = (
                f"Secret {where} had type {outcome.old_type} and secretObjects asks for "
                f"{obj.type}: the type cannot change, so the Secret was deleted and created again"
            )
            await self.events.record(ref, "Normal", TYPE_CHANGED, message)
        elif outcome.result is Result.REFUSED:
            if outcome.code == 403:  # the text names the verb and the ClusterRole that grants it
                log.error("secret sync forbidden: %s", outcome.error)
            message = f"failed to sync Secret {where}: {outcome.error}"
            await self.events.record(ref, "Warning", FAILED_TO_CREATE, message)
        elif outcome.result is Result.ERROR:
            log.warning("secret sync of %s: %s", where, outcome.error)

    def _target_problem(self, pod: Pod, spc_name: str, target: str) -> str:
        """Why the SPCPS's target path is not this pod's volume of this SPC ('' if it is)."""
        ref = _pod_ref(pod)
        where = f"pod {ref.namespace}/{ref.name}"
        parsed = parse_target(target)
        if not parsed.kubelet_shaped or parsed.pod_uid != ref.uid:
            return f"secret provider class pod status targetPath did not match pod UID for {where}"
        if csi_volume(pod, spc_name, parsed.volume, DRIVER_NAME) is None:
            return (
                "secret provider class pod status volume name did not match a volume of "
                f"{where} using secretProviderClass {spc_name}"
            )
        return ""

    async def _mounted_here(self, target: str) -> bool:
        """In the driver's mount table; else (a restart that could not recover it from the API
        server) at least a mount point on this node."""
        if self._mounts is None or target in self._mounts:
            return True
        try:
            return await asyncio.to_thread(mounter.is_mount_point, target)
        except OSError:
            return False
