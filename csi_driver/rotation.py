"""The rotation reconciler: keeps this node's mounted volumes fresh.

Every `--rotation-poll-interval` (with jitter) it walks the node's mounts (NodeService.mounts,
rebuilt from SPCPS on start), rebuilds each volume's Mount request exactly as a publish builds
it (node.build_mount_request) from the pod, its SPC, fresh service-account tokens and the
current nodePublishSecretRef data, calls the provider with the current object versions, and
rewrites files atomically only when content changed. Mounts whose pods share SPC, namespace,
service account, nodePublishSecretRef and volume attributes get one provider call per tick.

A failure never touches what is mounted: the volume is retried with backoff (1-2-4-… s,
capped at the interval), and the pod gets a Warning event. Kubelet republishes
(`requiresRepublish`) are served through NodeService.on_republish with a per-volume throttle.
Time comes from injected `clock`/`sleep`, so the schedule is tested on fake time.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import logging
import math
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from lightkube import AsyncClient
from lightkube.models.core_v1 import EventSource, ObjectReference
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Event, Pod, Secret
from prometheus_client import Counter

from . import DRIVER_NAME, atomic_writer
from .errors import FILE_WRITE_ERROR, KubeError, OperationPending, ProviderError
from .kube import ROLE_ROTATION, api_error_text, is_forbidden
from .metrics import OS_TYPE
from .node import (
    FILE_PERMISSION,
    POD_NAME,
    POD_NAMESPACE,
    POD_SA_NAME,
    POD_UID,
    SA_TOKENS,
    NodeService,
    PublishRequest,
    _key,
    build_mount_request,
    go_json,
)
from .spcps import PodStatusRecord, create_or_update
from .tokens import TokenSettings, pod_tokens, token_settings

log = logging.getLogger(__name__)

FORCE_ANNOTATION = "secrets-store.csi.k8s.io/force-refresh"
COMPONENT = "csi-secrets-store-rotation"
ROTATION_FAILED = "MountRotationFailed"
ROTATION_COMPLETE = "MountRotationComplete"
# error_type labels, upstream's where upstream has one
POD_VOLUME_NOT_FOUND = "PodVolumeNotFound"
SPC_NOT_FOUND = "SecretProviderClassNotFound"
SECRET_REF_NOT_FOUND = "NodePublishSecretRefNotFound"
TOKEN_REQUEST_FAILED = "ServiceAccountTokenRequestFailed"
SPCPS_UPDATE_FAILED = "SecretProviderClassPodStatusUpdateFailed"
JITTER = 0.1
BACKOFF_BASE = 1.0
_POD_SPECIFIC = (POD_NAME, POD_NAMESPACE, POD_UID, SA_TOKENS, "csi.storage.k8s.io/ephemeral")


class RotationError(Exception):
    def __init__(self, message: str, error_type: str) -> None:
        super().__init__(message)
        self.message = message
        self.error_type = error_type


# ---- schedule (pure, fake-time tested) ---------------------------------------------------


@dataclass
class VolumeState:
    failures: int = 0
    retry_at: float = 0.0
    last_attempt: float = -math.inf
    force_seen: str = ""


@dataclass
class Schedule:
    interval: float
    rng: Callable[[], float] = random.random
    states: dict[str, VolumeState] = field(default_factory=dict)

    def state(self, target: str) -> VolumeState:
        return self.states.setdefault(_key(target), VolumeState())

    def jittered(self) -> float:
        """The interval ± 10 %, so nodes started together do not burst together."""
        return float(self.interval * (1 - JITTER + 2 * JITTER * self.rng()))

    def backoff(self, failures: int) -> float:
        """1, 2, 4, … s (± 10 %), never beyond the interval."""
        base = min(BACKOFF_BASE * 2.0 ** max(failures - 1, 0), self.interval)
        return base * (1 - JITTER + 2 * JITTER * self.rng())

    def failed(self, target: str, now: float) -> float:
        s = self.state(target)
        s.failures += 1
        s.retry_at = now + self.backoff(s.failures)
        return s.retry_at

    def succeeded(self, target: str) -> None:
        s = self.state(target)
        s.failures, s.retry_at = 0, 0.0

    def due(self, target: str, now: float, full_tick: bool) -> bool:
        """Full tick: every volume not waiting out a backoff. Retry wake-up: the backed-off."""
        s = self.state(target)
        if s.failures:
            return s.retry_at <= now
        return full_tick

    def taken(self, target: str, now: float) -> None:
        """A backed-off volume is being retried: whatever happens to it (skipped, busy), the
        loop must not wake for it again before another backoff."""
        s = self.state(target)
        if s.failures:
            s.retry_at = now + self.backoff(s.failures)

    def next_retry(self) -> float:
        return min((s.retry_at for s in self.states.values() if s.failures), default=math.inf)

    def republish_allowed(self, target: str, now: float) -> bool:
        """Kubelet's republishes reach the provider at most once an interval per volume."""
        s = self.state(target)
        if s.last_attempt == -math.inf:
            s.last_attempt = now  # just mounted, or the driver restarted: wait an interval
            return False
        if s.failures:
            return s.retry_at <= now
        return now - s.last_attempt >= self.interval

    def forget(self, live: set[str]) -> None:
        for key in list(self.states):
            if key not in live:
                del self.states[key]


# ---- one volume's plan ---------------------------------------------------------------------


@dataclass
class Plan:
    record: PodStatusRecord
    provider: str
    spc_parameters: Mapping[str, str]
    volume_context: dict[str, str]
    secrets: dict[str, str] = field(repr=False)
    service_account: str
    secret_ref: str
    forced: bool = False

    @property
    def target(self) -> str:
        return self.record.target_path

    def share_key(self) -> tuple[Any, ...] | None:
        """Mounts with equal keys get byte-identical requests but for pod facts and tokens;
        their authorization is the same by construction. Pod identity (aad-pod-identity)
        authorizes per pod, so it never shares."""
        if self.forced:
            return None
        merged = dict(self.spc_parameters) | self.volume_context
        if merged.get("usePodIdentity", "").lower() == "true":
            return None
        attrs = tuple(
            sorted((k, v) for k, v in self.volume_context.items() if k not in _POD_SPECIFIC)
        )
        return (
            self.record.namespace,
            self.record.spc_name,
            self.provider,
            self.service_account,
            self.secret_ref,
            attrs,
        )


def volume_name_from_target(target: str) -> str:
    """…/pods/<uid>/volumes/kubernetes.io~csi/<volume>/mount → <volume>."""
    parts = target.rstrip("/").split("/")
    return parts[-2] if len(parts) >= 2 and parts[-1] == "mount" else ""


def find_volume(pod: Pod, record: PodStatusRecord, driver_name: str) -> Any:
    if pod.spec is None:
        return None
    wanted = volume_name_from_target(record.target_path)
    candidates = [
        v
        for v in pod.spec.volumes or []
        if v.csi is not None
        and v.csi.driver == driver_name
        and (v.csi.volumeAttributes or {}).get("secretProviderClass") == record.spc_name
    ]
    for v in candidates:
        if v.name == wanted:
            return v
    return candidates[0] if candidates and not wanted else None


# ---- the reconciler ------------------------------------------------------------------------


class Reconciler:
    def __init__(
        self,
        node: NodeService,
        client: AsyncClient | None,
        *,
        interval: float,
        share: bool = True,
        driver_name: str = DRIVER_NAME,
        concurrency: int = 8,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.node = node
        self.client = client
        self.share = share
        self.driver_name = driver_name
        self.clock = clock
        self.sleep = sleep
        self.schedule = Schedule(interval, rng)
        self._limit = asyncio.Semaphore(concurrency)
        self._task: asyncio.Task[None] | None = None
        self.ticks = 0
        self.provider_calls = 0
        # Called after a mount's files or versions changed (secret sync refreshes its Secrets).
        self.on_rotated: Callable[[PodStatusRecord], Awaitable[None]] | None = None
        # Without Kubernetes (standalone mode): a mount's plan comes from here, not from its pod.
        self.plan_source: Callable[[PodStatusRecord], Awaitable[Plan]] | None = None
        self.record_status = True  # False without an API server: no SPCPS to update
        metrics = node.metrics
        self.metrics = metrics
        self.calls_saved = Counter(
            "rotation_provider_calls_saved",
            "Provider Mount calls saved by sharing one call among mounts with the same "
            "SecretProviderClass, namespace, service account and nodePublishSecretRef",
            ["provider", "os_type"],
            registry=metrics.registry,
        )

    # -- lifecycle

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self.run(), name="rotation")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def run(self) -> None:
        next_tick = self.clock() + self.schedule.jittered()
        while True:
            wake = min(next_tick, self.schedule.next_retry())
            await self.sleep(max(0.0, wake - self.clock()))
            full = self.clock() >= next_tick
            try:
                await self.tick(full=full)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("rotation tick failed")
            if full:
                next_tick = self.clock() + self.schedule.jittered()

    # -- one tick

    async def tick(self, full: bool = True) -> None:
        """Reconcile every due mount; pods sharing an identity share one provider call."""
        self.ticks += 1
        now = self.clock()
        records = list(self.node.mounts.values())
        self.schedule.forget({_key(r.target_path) for r in records})
        due = [r for r in records if self.schedule.due(r.target_path, now, full)]
        for r in due:
            self.schedule.taken(r.target_path, now)
        if not due:
            return
        if self.plan_source is not None:
            await self._tick_local(due, now)
            return
        if self.client is None:
            log.warning("rotation: no Kubernetes API configured; skipping")
            return
        try:
            pods = await self._pods()
        except KubeError as e:
            log.warning("rotation: could not list pods on node %s: %s", self.node.node_id, e)
            for r in due:
                self._failed(r, None, "", RotationError(str(e), "PodListFailed"))
            return
        settings: TokenSettings | None = None
        groups: dict[Any, list[Plan]] = {}
        secret_cache: dict[tuple[str, str], dict[str, str] | RotationError] = {}
        for record in due:
            pod = pods.get((record.namespace, record.pod_name))
            if not self._live(pod, record):
                continue
            assert pod is not None
            try:
                plan = await self._plan(record, pod, secret_cache)
            except RotationError as e:
                self._failed(record, pod, "", e)
                continue
            self.schedule.state(record.target_path).last_attempt = now
            key = plan.share_key() if self.share else None
            groups.setdefault(key if key is not None else ("solo", plan.target), []).append(plan)
        if groups:
            try:
                settings = await token_settings(self.client, self.driver_name)
            except KubeError as e:
                for plans in groups.values():
                    for p in plans:
                        self._failed(
                            p.record,
                            pods.get((p.record.namespace, p.record.pod_name)),
                            p.provider,
                            RotationError(str(e), TOKEN_REQUEST_FAILED),
                        )
                return
        calls = self.provider_calls
        await asyncio.gather(
            *(self._reconcile_group(plans, pods, settings) for plans in groups.values())
        )
        log.info(
            "rotation tick: %d mounts due, %d provider calls, %.3fs",
            len(due),
            self.provider_calls - calls,
            self.clock() - now,
        )

    async def _tick_local(self, due: list[PodStatusRecord], now: float) -> None:
        """A tick without Kubernetes: plans from plan_source, then the same calls and writes."""
        assert self.plan_source is not None
        plans: list[Plan] = []
        for record in due:
            try:
                plans.append(await self.plan_source(record))
            except RotationError as e:
                self._failed(record, None, "", e)
                continue
            self.schedule.state(record.target_path).last_attempt = now
        await asyncio.gather(*(self._reconcile_group([p], {}, None) for p in plans))

    async def _pods(self) -> dict[tuple[str, str], Pod]:
        assert self.client is not None
        out: dict[tuple[str, str], Pod] = {}
        try:
            async for pod in self.client.list(
                Pod, namespace="*", fields={"spec.nodeName": self.node.node_id}
            ):
                if pod.metadata is not None:
                    out[(pod.metadata.namespace or "", pod.metadata.name or "")] = pod
        except Exception as e:
            raise KubeError(api_error_text(e)) from None
        return out

    def _live(self, pod: Pod | None, record: PodStatusRecord) -> bool:
        """Gone, replaced, terminating, finished or elsewhere: skip quietly."""
        if pod is None or pod.metadata is None or pod.spec is None:
            log.debug("rotation: pod %s/%s gone, skipping", record.namespace, record.pod_name)
            return False
        if record.pod_uid and pod.metadata.uid != record.pod_uid:
            return False
        if pod.metadata.deletionTimestamp is not None:
            return False
        if pod.status is not None and pod.status.phase in ("Succeeded", "Failed"):
            return False
        return pod.spec.nodeName == self.node.node_id

    async def _plan(
        self,
        record: PodStatusRecord,
        pod: Pod,
        secret_cache: dict[tuple[str, str], dict[str, str] | RotationError] | None = None,
    ) -> Plan:
        assert pod.metadata is not None and pod.spec is not None and self.client is not None
        ns = record.namespace
        volume = find_volume(pod, record, self.driver_name)
        if volume is None:
            raise RotationError(
                f"could not find secret provider class pod status volume for pod "
                f"{ns}/{record.pod_name}",
                POD_VOLUME_NOT_FOUND,
            )
        try:
            spc = await self.node.spcs.get(ns, record.spc_name)
        except KubeError as e:
            raise RotationError(
                f"failed to get secret provider class {ns}/{record.spc_name}, err: {e}",
                SPC_NOT_FOUND,
            ) from None
        sa = pod.spec.serviceAccountName or "default"
        context = dict(volume.csi.volumeAttributes or {})
        context.update(
            {
                POD_NAME: pod.metadata.name or "",
                POD_NAMESPACE: ns,
                POD_UID: pod.metadata.uid or "",
                POD_SA_NAME: sa,
                "csi.storage.k8s.io/ephemeral": "true",
            }
        )
        secrets: dict[str, str] = {}
        ref = volume.csi.nodePublishSecretRef
        if ref is not None and ref.name:
            cache = secret_cache if secret_cache is not None else {}
            cached = cache.get((ns, ref.name))
            if cached is None:
                cached = cache[(ns, ref.name)] = await self._secret_data(ns, ref.name)
            if isinstance(cached, RotationError):
                raise cached
            secrets = dict(cached)
        annotations = pod.metadata.annotations or {}
        force = annotations.get(FORCE_ANNOTATION, "")
        state = self.schedule.state(record.target_path)
        forced = bool(force) and force != state.force_seen
        state.force_seen = force
        return Plan(
            record=record,
            provider=spc.provider,
            spc_parameters=spc.parameters,
            volume_context=context,
            secrets=secrets,
            service_account=sa,
            secret_ref=ref.name if ref is not None and ref.name else "",
            forced=forced,
        )

    async def _secret_data(self, ns: str, name: str) -> dict[str, str] | RotationError:
        """A nodePublishSecretRef's data, read once per tick however many pods use it."""
        assert self.client is not None
        try:
            secret = await self.client.get(Secret, name, namespace=ns)
        except Exception as e:
            return RotationError(
                f"failed to get node publish secret {ns}/{name}, err: "
                f"{api_error_text(e, ROLE_ROTATION)}",
                SECRET_REF_NOT_FOUND,
            )
        return {
            k: base64.b64decode(v).decode("utf-8", "replace")
            for k, v in (secret.data or {}).items()
        }

    async def _reconcile_group(
        self, plans: list[Plan], pods: Mapping[tuple[str, str], Pod], settings: TokenSettings | None
    ) -> None:
        lead = plans[0]
        started = self.clock()
        async with self._limit:
            try:
                attributes, secrets = await self._request(lead, settings)
                result = await self._mount(lead, attributes, secrets)
            except RotationError as e:
                for p in plans:
                    self._failed(
                        p.record, pods.get((p.record.namespace, p.record.pod_name)), p.provider, e
                    )
                return
        if len(plans) > 1:
            self.calls_saved.labels(lead.provider, OS_TYPE).inc(len(plans) - 1)
        for p in plans:
            pod = pods.get((p.record.namespace, p.record.pod_name))
            await self._apply(p, pod, result.object_versions, result.files, started, locked=False)

    async def _request(self, plan: Plan, settings: TokenSettings | None) -> tuple[str, str]:
        context = dict(plan.volume_context)
        secrets = dict(plan.secrets)
        if settings is not None and settings.audiences:
            assert self.client is not None
            try:
                tokens = await pod_tokens(
                    self.client,
                    settings,
                    namespace=plan.record.namespace,
                    pod_name=plan.record.pod_name,
                    pod_uid=context[POD_UID],
                    service_account=plan.service_account,
                )
            except KubeError as e:
                raise RotationError(str(e), TOKEN_REQUEST_FAILED) from None
            if tokens:
                (secrets if settings.in_secrets else context)[SA_TOKENS] = tokens
        return build_mount_request(plan.spc_parameters, context, secrets)

    async def _mount(self, plan: Plan, attributes: str, secrets: str) -> Any:
        self.provider_calls += 1
        try:
            return await self.node.providers.mount(
                plan.provider,
                attributes,
                secrets,
                plan.target,
                go_json(FILE_PERMISSION),
                dict(plan.record.objects),
            )
        except ProviderError as e:
            raise RotationError(f"provider mount err: {e.message}", e.error_type) from None

    async def _apply(
        self,
        plan: Plan,
        pod: Pod | None,
        versions: dict[str, str],
        files: dict[str, atomic_writer.FileProjection],
        started: float,
        *,
        locked: bool,
    ) -> None:
        record = plan.record
        target = record.target_path
        try:
            if locked:
                changed = await self._write_files(target, files)
            else:
                try:
                    # only the file swap holds the target's lock: API calls happen outside it,
                    # so an unpublish is never refused because of rotation bookkeeping
                    with self.node._exclusive(target):
                        changed = await self._write_files(target, files)
                except OperationPending:
                    log.info("rotation: %s busy (publish/unpublish in flight); next tick", target)
                    return
            if changed is not None:
                await self._record(plan, pod, versions, changed)
        except RotationError as e:
            self._failed(record, pod, plan.provider, e)
            return
        finally:
            self.metrics.rotation_reconcile_duration.labels(OS_TYPE).observe(
                max(0.0, self.clock() - started)
            )
        self.schedule.succeeded(target)

    async def _write_files(
        self, target: str, files: dict[str, atomic_writer.FileProjection]
    ) -> bool | None:
        """True when files changed; None when the volume was unpublished meanwhile."""
        if _key(target) not in self.node.mounts:
            return None
        try:
            return await asyncio.to_thread(self._write, target, files)
        except (OSError, atomic_writer.PayloadError) as e:
            raise RotationError(f"failed to write files: {e}", FILE_WRITE_ERROR) from None

    async def _record(
        self, plan: Plan, pod: Pod | None, versions: dict[str, str], changed: bool
    ) -> None:
        """SPCPS, metric, synced Secrets, event: after the files are in place."""
        record = plan.record
        target = record.target_path
        rotated = dict(versions) != dict(record.objects)
        if rotated and _key(target) in self.node.mounts:
            new = PodStatusRecord(
                pod_name=record.pod_name,
                namespace=record.namespace,
                pod_uid=record.pod_uid,
                spc_name=record.spc_name,
                target_path=target,
                node_id=record.node_id,
                mounted=True,
                objects=dict(versions),
            )
            try:
                if self.record_status:
                    await create_or_update(self.client, new)
            except KubeError as e:
                raise RotationError(
                    f"failed to update versions in spc pod status {record.name}, err: {e}",
                    SPCPS_UPDATE_FAILED,
                ) from None
            if _key(target) in self.node.mounts:
                self.node.mounts[_key(target)] = new
        self.metrics.rotation_reconcile.labels(plan.provider, OS_TYPE, str(rotated).lower()).inc()
        if (rotated or changed) and self.on_rotated is not None:
            await self.on_rotated(self.node.mounts.get(_key(target), record))
        if rotated or changed or plan.forced:
            log.info(
                "rotation: %s/%s spc %s: versions %s, files %s%s",
                record.namespace,
                record.pod_name,
                record.spc_name,
                "changed" if rotated else "unchanged",
                "rewritten" if changed else "unchanged",
                " (forced)" if plan.forced else "",
            )
            await self._event(
                pod,
                record,
                "Normal",
                ROTATION_COMPLETE,
                "successfully rotated mounted contents for spc "
                f"{record.namespace}/{record.spc_name}",
            )

    @staticmethod
    def _write(target: str, files: Mapping[str, atomic_writer.FileProjection]) -> bool:
        atomic_writer.cleanup_provider_files(target, files)
        return atomic_writer.write(target, files)

    def _failed(
        self, record: PodStatusRecord, pod: Pod | None, provider: str, e: RotationError
    ) -> None:
        retry_at = self.schedule.failed(record.target_path, self.clock())
        self.metrics.rotation_reconcile_error.labels(provider, e.error_type, OS_TYPE, "false").inc()
        log.warning(
            "rotation failed for pod %s/%s (%s): %s; content kept, retry in %.1fs",
            record.namespace,
            record.pod_name,
            e.error_type,
            e.message,
            retry_at - self.clock(),
        )
        task = asyncio.ensure_future(
            self._event(pod, record, "Warning", ROTATION_FAILED, e.message)
        )
        task.add_done_callback(lambda t: None if t.cancelled() else t.exception())

    async def _event(
        self, pod: Pod | None, record: PodStatusRecord, kind: str, reason: str, message: str
    ) -> None:
        if self.client is None:
            return
        now = datetime.datetime.now(datetime.UTC)
        uid = pod.metadata.uid if pod is not None and pod.metadata is not None else record.pod_uid
        try:
            await self.client.create(
                Event(
                    metadata=ObjectMeta(
                        generateName=f"{record.pod_name}.", namespace=record.namespace
                    ),
                    involvedObject=ObjectReference(
                        apiVersion="v1",
                        kind="Pod",
                        name=record.pod_name,
                        namespace=record.namespace,
                        uid=uid,
                    ),
                    reason=reason,
                    message=message[:1024],
                    type=kind,
                    source=EventSource(component=COMPONENT, host=self.node.node_id or None),
                    firstTimestamp=now,
                    lastTimestamp=now,
                    count=1,
                )
            )
        except Exception as e:
            log.log(
                logging.ERROR if is_forbidden(e) else logging.INFO,
                "rotation: could not record event on %s/%s: %s",
                record.namespace,
                record.pod_name,
                api_error_text(e),
            )

    # -- kubelet republish

    async def republish(self, req: PublishRequest) -> None:
        """A publish of a mounted target (requiresRepublish): maybe refresh, never remount.
        Already inside the node's per-target lock. Failures keep the content and return OK."""
        target = req.target_path
        key = _key(target)
        record = self.node.mounts.get(key)
        now = self.clock()
        if record is None or not self.schedule.republish_allowed(target, now):
            return
        self.schedule.state(target).last_attempt = now
        started = now
        ctx = req.volume_context
        provider = ""
        try:
            try:
                spc = await self.node.spcs.get(record.namespace, record.spc_name)
            except KubeError as e:
                raise RotationError(
                    f"failed to get secret provider class {record.namespace}/{record.spc_name}, "
                    f"err: {e}",
                    SPC_NOT_FOUND,
                ) from None
            provider = spc.provider
            plan = Plan(
                record=record,
                provider=spc.provider,
                spc_parameters=spc.parameters,
                volume_context=dict(ctx),
                secrets=dict(req.secrets),
                service_account=ctx.get(POD_SA_NAME, ""),
                secret_ref="",
            )
            attributes, secrets = build_mount_request(spc.parameters, ctx, req.secrets)
            result = await self._mount(plan, attributes, secrets)
        except RotationError as e:
            self._failed(record, None, provider, e)
            return
        await self._apply(plan, None, result.object_versions, result.files, started, locked=True)
