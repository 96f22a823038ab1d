"""The rotation reconciler: keeps this node's mounted volumes fresh.

Every `--rotation-poll-interval` (with jitter) it takes the mounts that are due (schedule.py),
asks its PlanSource for their plans (plans.py: from the pod, its SPC, fresh service-account
tokens and the current nodePublishSecretRef data; standalone: from files), calls the provider
with the current object versions, and rewrites files atomically only when content changed.
Mounts whose plans share a key (sharing.py) share one provider call: one call in flight per
key, whether a tick or a kubelet republish asks, and a finished call also serves the group's
volumes that come due within the tick clock's jitter after it (REUSE), so a group costs one call
per interval whatever the order of ticks and republishes.

A failure never touches what is mounted: the volume is retried with backoff (1-2-4-… s,
capped at the interval), and the pod gets a Warning event. Kubelet republishes
(`requiresRepublish`) are served through `republish` with a per-volume throttle. Time comes
from injected `clock`/`sleep`, so the schedule is tested on fake time.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

from prometheus_client import Counter

from . import atomic_writer
from .errors import (
    FILE_WRITE_ERROR,
    SPCPS_UPDATE_FAILED,
    KubeError,
    OperationPending,
    ProviderError,
    RotationError,
)
from .events import EventSink, PodRef
from .intervals import DEFAULT_MIN_INTERVAL, LOOK_EVERY, Intervals
from .kube import SpcSource, get_spc
from .metrics import OS_TYPE, Metrics
from .mounts import MountTable
from .plans import Plan, PlanSource, plain_request, republish_plan
from .provider_client import MountResult, ProviderClients
from .schedule import JITTER, Schedule, Ticking
from .sharing import ShareKey
from .single_flight import SingleFlight
from .spcps import PodStatusRecord, StatusWriter
from .volumes import FILE_PERMISSION, PublishRequest, go_json

log = logging.getLogger(__name__)

COMPONENT = "csi-secrets-store-rotation"
ROTATION_FAILED = "MountRotationFailed"
ROTATION_COMPLETE = "MountRotationComplete"

Hook = Callable[[PodStatusRecord], Awaitable[None]]
Request = Callable[[], Awaitable[tuple[str, str]]]
# A group's finished call serves its volumes that come due this long after it started, as a
# share of their interval: republishes run ahead of the tick by at most the clock's jitter.
REUSE = 2 * JITTER
# A volume busy with a kubelet republish is tried again this often before its tick skips it.
BUSY_TRIES, BUSY_WAIT = 5, 0.05


class Reconciler:
    def __init__(
        self,
        *,
        mounts: MountTable,
        providers: ProviderClients,
        spcs: SpcSource,
        metrics: Metrics,
        plans: PlanSource,
        events: EventSink,
        status: StatusWriter,
        on_rotated: Hook | None = None,
        interval: float,
        min_interval: float = DEFAULT_MIN_INTERVAL,
        share: bool = True,
        concurrency: int = 8,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.mounts = mounts
        self.providers = providers
        self.spcs = spcs  # republishes read the SPC; ticks go through their plans
        self.metrics = metrics
        self.plans = plans
        self.events = events
        self.status = status
        # after a mount's files or versions changed (secret sync refreshes its Secrets)
        self.on_rotated = on_rotated
        self.share = share
        self.clock = clock
        self.sleep = sleep
        self.schedule = Schedule(interval, rng)
        # each SPC may set its own interval (an annotation), bounded below by min_interval
        self.intervals = Intervals(self.schedule, spcs, events, min_interval, clock)
        self._limit = asyncio.Semaphore(concurrency)
        self.flights: SingleFlight[ShareKey, MountResult] = SingleFlight(clock)
        self._task: asyncio.Task[None] | None = None
        self.ticks = 0
        self.provider_calls = 0
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
        """Wake for the next tick of any interval in use, a retry, or every LOOK_EVERY: a new
        mount's or an edited class's own interval (and its warning) is seen that soon."""
        self.schedule.start(self.clock())
        look = min(self.schedule.interval, LOOK_EVERY)
        while True:
            wake = min(self.schedule.next_tick(), self.schedule.next_retry(), self.clock() + look)
            await self.sleep(max(0.0, wake - self.clock()))
            try:
                await self.intervals.resolve(self.mounts.records())
                now = self.clock()
                ticking = self.schedule.begin(now)
                if ticking or self.schedule.next_retry() <= now:
                    await self.tick(ticking)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("rotation tick failed")

    # -- one tick

    async def tick(self, full: Ticking = True) -> None:
        """Reconcile every due mount (`full`: all, the backed-off only, or the volumes of
        the intervals ticking); pods sharing an identity share one provider call."""
        self.ticks += 1
        now = self.clock()
        records = self.mounts.records()
        self.schedule.forget(self.mounts.targets())
        self.flights.prune()
        due = [r for r in records if self.schedule.due(r.target_path, now, full)]
        for r in due:
            self.schedule.taken(r.target_path, now)
        if not due:
            return
        batch = await self.plans.plans(due)
        for f in batch.failed:
            self._failed(f.record, "", f.error, f.pod_uid)
        if not batch.complete:
            return
        groups = self._group(batch.plans, now)
        if groups:
            try:
                await self.plans.prepare()
            except RotationError as e:
                for plans in groups.values():
                    for p in plans:
                        self._failed(p.record, p.provider, e, p.pod_uid)
                return
        calls = self.provider_calls
        await asyncio.gather(*(self._reconcile_group(plans, now) for plans in groups.values()))
        log.info(
            "rotation tick: %d mounts due, %d provider calls, %.3fs",
            len(due),
            self.provider_calls - calls,
            self.clock() - now,
        )

    def _group(self, plans: list[Plan], now: float) -> dict[Any, list[Plan]]:
        groups: dict[Any, list[Plan]] = {}
        for plan in plans:
            plan.forced = self.schedule.forced(plan.target, plan.force_token)
            self.schedule.state(plan.target).last_attempt = now
            key = plan.share_key() if self.share else None
            groups.setdefault(key if key is not None else ("solo", plan.target), []).append(plan)
        return groups

    async def _reconcile_group(self, plans: list[Plan], began: float) -> None:
        lead = plans[0]
        started = self.clock()
        async with self._limit:
            try:
                request = partial(self.plans.request, lead)
                result = await self._shared_mount(lead, request, began)
            except RotationError as e:
                for p in plans:
                    self._failed(p.record, p.provider, e, p.pod_uid)
                return
        if len(plans) > 1:
            self.calls_saved.labels(lead.provider, OS_TYPE).inc(len(plans) - 1)
        for p in plans:
            await self._apply(p, result, started, locked=False)

    async def _shared_mount(
        self, plan: Plan, request: Request, began: float | None = None
    ) -> MountResult:
        """The plan's provider call, or its group's call in flight or just made (before
        `began`, the tick's start, plus REUSE of the interval)."""

        async def call() -> MountResult:
            attributes, secrets = await request()
            return await self._mount(plan, attributes, secrets)

        key = plan.share_key() if self.share else None
        if key is None:
            return await call()
        reuse = REUSE * self.schedule.interval_of(plan.target)
        result, shared = await self.flights.run(key, call, reuse, began)
        if shared:
            self.calls_saved.labels(plan.provider, OS_TYPE).inc()
        return result

    async def _mount(self, plan: Plan, attributes: str, secrets: str) -> MountResult:
        self.provider_calls += 1
        try:
            return await self.providers.mount(
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
        self, plan: Plan, result: MountResult, started: float, *, locked: bool
    ) -> None:
        target = plan.target
        try:
            if locked:
                changed = await self._write_files(target, result.files)
            else:
                try:
                    changed = await self._write_when_free(target, result.files)
                except OperationPending:
                    log.info("rotation: %s busy (publish/unpublish in flight); next tick", target)
                    return
            if changed is not None:
                await self._record(plan, result.object_versions, changed)
        except RotationError as e:
            self._failed(plan.record, plan.provider, e, plan.pod_uid)
            return
        finally:
            self.metrics.rotation_reconcile_duration.labels(OS_TYPE).observe(
                max(0.0, self.clock() - started)
            )
        self.schedule.succeeded(target)

    async def _write_when_free(
        self, target: str, files: dict[str, atomic_writer.FileProjection]
    ) -> bool | None:
        """Only the file swap holds the target's lock (API calls happen outside it, so an
        unpublish is never refused for rotation's bookkeeping). A republish holds it for
        milliseconds: wait that out (BUSY_TRIES), else OperationPending."""
        for attempt in range(BUSY_TRIES):
            try:
                with self.mounts.lock(target):
                    return await self._write_files(target, files)
            except OperationPending:
                if attempt == BUSY_TRIES - 1:
                    raise
                await self.sleep(BUSY_WAIT)
        return None

    async def _write_files(
        self, target: str, files: dict[str, atomic_writer.FileProjection]
    ) -> bool | None:
        """True when files changed; None when the volume was unpublished meanwhile."""
        if target not in self.mounts:
            return None
        try:
            group = self.mounts.group(target)  # the pod's fsGroup, kept on every rewrite
            return await asyncio.to_thread(atomic_writer.replace, target, files, group)
        except (OSError, atomic_writer.PayloadError) as e:
            raise RotationError(f"failed to write files: {e}", FILE_WRITE_ERROR) from None

    async def _record(self, plan: Plan, versions: dict[str, str], changed: bool) -> None:
        """SPCPS, metric, synced Secrets, event: after the files are in place."""
        record = plan.record
        rotated = dict(versions) != dict(record.objects)
        if rotated and record.target_path in self.mounts:
            await self._write_status(record, versions)
        self.metrics.rotation_reconcile.labels(plan.provider, OS_TYPE, str(rotated).lower()).inc()
        if (rotated or changed) and self.on_rotated is not None:
            await self.on_rotated(self.mounts.get(record.target_path) or record)
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
            await self.events.record(
                self._pod(record, plan.pod_uid),
                "Normal",
                ROTATION_COMPLETE,
                "successfully rotated mounted contents for spc "
                f"{record.namespace}/{record.spc_name}",
            )

    async def _write_status(self, record: PodStatusRecord, versions: dict[str, str]) -> None:
        new = PodStatusRecord(
            pod_name=record.pod_name,
            namespace=record.namespace,
            pod_uid=record.pod_uid,
            spc_name=record.spc_name,
            target_path=record.target_path,
            node_id=record.node_id,
            mounted=True,
            objects=dict(versions),
        )
        try:
            await self.status.write(new)
        except KubeError as e:
            raise RotationError(
                f"failed to update versions in spc pod status {record.name}, err: {e}",
                SPCPS_UPDATE_FAILED,
            ) from None
        self.mounts.refresh(new)

    @staticmethod
    def _pod(record: PodStatusRecord, uid: str) -> PodRef:
        return PodRef(record.pod_name, record.namespace, uid or record.pod_uid)

    def _failed(self, record: PodStatusRecord, provider: str, e: RotationError, uid: str) -> None:
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
            self.events.record(self._pod(record, uid), "Warning", ROTATION_FAILED, e.message)
        )
        task.add_done_callback(lambda t: None if t.cancelled() else t.exception())

    # -- kubelet republish

    async def republish(self, req: PublishRequest) -> None:
        """A publish of a mounted target (requiresRepublish): maybe refresh, never remount.
        Already inside the target's lock. Failures keep the content and return OK."""
        target = req.target_path
        record = self.mounts.get(target)
        if record is None:
            return
        await self.intervals.resolve([record])
        now = self.clock()
        if not self.schedule.republish_allowed(target, now):
            return
        self.schedule.state(target).last_attempt = now
        provider = ""
        try:
            spc = await get_spc(self.spcs, record.namespace, record.spc_name, RotationError)
            provider = spc.provider
            plan = republish_plan(
                record, spc.provider, spc.parameters, req.volume_context, req.secrets
            )
            result = await self._shared_mount(plan, partial(_own_request, plan))
        except RotationError as e:
            self._failed(record, provider, e, "")
            return
        await self._apply(plan, result, now, locked=True)


async def _own_request(plan: Plan) -> tuple[str, str]:
    """A republish's request: kubelet's context and secrets, its fresh tokens included."""
    return plain_request(plan)
