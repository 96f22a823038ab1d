# Over 400 lines: the triggers, the owner walk and the rate limits of one controller.
"""Restart-on-change (opt-in, `--enable-restart-on-change`): roll an annotated Deployment,
StatefulSet or DaemonSet once when what its pods consume changed.

Triggers:
- a SecretProviderClassPodStatus of one of its pods reports other object versions than
  before (the drivers update them when they rotate); the pod is mapped to its workload
  through its controller owner (ReplicaSet → Deployment, or the StatefulSet/DaemonSet);
- a Secret its pod template references (env `secretKeyRef`, `envFrom`, `secret` and
  projected volumes) changes its data, if this project manages it (the driver's sync label
  `secrets-store.csi.k8s.io/managed=true`, or the SecretSync controller's label).

The action is a patch of the pod template's annotation `secrets-store.csi.k8s.io/restarted-for`
with a digest of what changed: the SPC and its object ids and versions, or the Secret's uid
and resourceVersion; never a value nor a hash of one. The same change reported again (by
another pod, another node) has the same digest: no patch. New pods mount what is already
current: an added SPCPS is never a change. The digest in the template is the memory: a
restarted controller starts from what the watches list, which are not changes.

One rotation is often reported twice: the driver writes the pods' SPCPS, then the Secret it
syncs from the same files, milliseconds apart. So a workload's first change waits `settle`
seconds for the others, and one patch carries every digest gathered (comma separated): any
of them reported again later is a no-op.

A paused Deployment is patched like any other (harmless: Kubernetes rolls it when it is
resumed, with the new annotation) but is not counted as a rollout in flight.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from typing import Any

import httpx2
from lightkube import ApiError, AsyncClient
from lightkube.operators import exists
from lightkube.resources.apps_v1 import DaemonSet, Deployment, ReplicaSet, StatefulSet
from lightkube.resources.core_v1 import Pod, Secret
from lightkube.types import PatchType

from csi_driver.events import EventSink, PodRef
from csi_driver.kube import (
    SecretProviderClassPodStatus,
    api_error_text,
    denied_request_text,
    is_forbidden,
    to_dict,
    watch_forever,
)
from csi_driver.secret_writer import MANAGED_LABEL

from .api import CONTROLLER_LABEL
from .metrics import Metrics

log = logging.getLogger(__name__)

ANNOTATION = "secrets-store.csi.k8s.io/restart-on-change"  # on the workload: "true" opts in
DIGEST_ANNOTATION = "secrets-store.csi.k8s.io/restarted-for"  # on the pod template
KINDS: dict[str, Any] = {
    "Deployment": Deployment,
    "StatefulSet": StatefulSet,
    "DaemonSet": DaemonSet,
}
ROLE = "secrets-store-sync-controller-restart-on-change-role"
RBAC_FILE = "daemonset/sync-controller/rbac-restart-on-change.yaml"

WKey = tuple[str, str, str]  # kind, namespace, name
SETTLE = 2.0  # seconds a workload's first change waits for the rest of the same rotation
MAX_DIGESTS = 16  # digests one patch carries (33 characters each in the annotation)


@dataclass(frozen=True)
class Change:
    digest: str
    what: str  # for the event: "SecretProviderClass ns/name (objects a, b)" or "Secret ns/name"


def _why(e: BaseException) -> str:
    """The API server's words; a Forbidden one (a watch's too) names this controller's role
    and file, not the driver's."""
    if isinstance(e, ApiError) and e.status.code == 403:
        text = str(e.status.message)
    elif isinstance(e, httpx2.HTTPStatusError) and is_forbidden(e):
        text = denied_request_text(e.request)  # a watch: the body is not read
    else:
        return api_error_text(e)
    return (
        f"{text}; check ClusterRole {ROLE} ({RBAC_FILE}): it must grant this and be bound "
        "to the sync controller's ServiceAccount"
    )


def _meta(obj: Mapping[str, Any]) -> dict[str, Any]:
    return dict(obj.get("metadata") or {})


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def opted_in(obj: Mapping[str, Any]) -> bool | None:
    """True/False as the annotation says; None for a value that is neither (a Warning)."""
    value = (_meta(obj).get("annotations") or {}).get(ANNOTATION)
    if value is None:
        return False
    value = str(value).strip().lower()
    if value in ("true", "false"):
        return value == "true"
    return None


def secret_names(template: Mapping[str, Any]) -> set[str]:
    """The Secrets a pod template consumes: env, envFrom, secret and projected volumes."""
    spec = template.get("spec") or {}
    names: set[str] = set()
    for c in [*(spec.get("containers") or []), *(spec.get("initContainers") or [])]:
        for env in c.get("env") or []:
            ref = (env.get("valueFrom") or {}).get("secretKeyRef") or {}
            if ref.get("name"):
                names.add(str(ref["name"]))
        for src in c.get("envFrom") or []:
            if (src.get("secretRef") or {}).get("name"):
                names.add(str(src["secretRef"]["name"]))
    for vol in spec.get("volumes") or []:
        if (vol.get("secret") or {}).get("secretName"):
            names.add(str(vol["secret"]["secretName"]))
        for source in (vol.get("projected") or {}).get("sources") or []:
            if (source.get("secret") or {}).get("name"):
                names.add(str(source["secret"]["name"]))
    return names


def _versions(obj: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
    status = obj.get("status") or {}
    return tuple(
        sorted(
            (str(o.get("id") or ""), str(o.get("version") or ""))
            for o in status.get("objects") or []
        )
    )


def _rolled_out(obj: Mapping[str, Any]) -> bool:
    """Nothing of ours in flight: rolled out, or paused (it rolls when resumed)."""
    meta, spec, status = _meta(obj), obj.get("spec") or {}, obj.get("status") or {}
    if spec.get("paused"):
        return True
    if int(status.get("observedGeneration") or 0) < int(meta.get("generation") or 0):
        return False
    if "desiredNumberScheduled" in status:  # DaemonSet
        return int(status.get("updatedNumberScheduled") or 0) >= int(
            status["desiredNumberScheduled"] or 0
        )
    return int(status.get("updatedReplicas") or 0) >= int(spec.get("replicas", 1) or 0)


class RestartController:
    def __init__(
        self,
        client: AsyncClient,
        events: EventSink,
        metrics: Metrics,
        min_interval: float,
        max_in_flight: int,
        rollout_timeout: float = 600.0,
        settle: float = SETTLE,
    ) -> None:
        self.client = client
        self.events = events
        self.metrics = metrics
        self.min_interval = min_interval
        self.max_in_flight = max(1, max_in_flight)
        self.rollout_timeout = rollout_timeout
        self.settle = settle
        self.workloads: dict[WKey, dict[str, Any]] = {}
        self.secrets: dict[tuple[str, str], dict[str, Any]] = {}  # data and rv of managed ones
        self.spcps: dict[tuple[str, str], tuple[tuple[str, str], ...]] = {}
        self._last: dict[WKey, float] = {}  # monotonic time of the last rollout
        self._in_flight: dict[WKey, float] = {}  # patched, not yet rolled out: since when
        self._pending: dict[WKey, dict[str, Change]] = {}  # by digest: settling, rate limited
        self._queue: asyncio.Queue[WKey] = asyncio.Queue()
        self._warned: dict[WKey, str] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    # ---- watches ---------------------------------------------------------------------------

    def on_workload(self, kind: str) -> Callable[[str, dict[str, Any]], None]:
        def handle(event: str, obj: dict[str, Any]) -> None:
            meta = _meta(obj)
            key = (kind, str(meta.get("namespace") or ""), str(meta.get("name") or ""))
            if event == "DELETED":
                self.workloads.pop(key, None)
                self._in_flight.pop(key, None)
                return
            self.workloads[key] = obj
            if key in self._in_flight and _rolled_out(obj):
                self._in_flight.pop(key, None)
            value = (meta.get("annotations") or {}).get(ANNOTATION)
            if opted_in(obj) is None and self._warned.get(key) != value:
                self._warned[key] = str(value)
                self._warn(key, obj, str(value))

        return handle

    def on_secret(self, event: str, obj: dict[str, Any]) -> None:
        meta = _meta(obj)
        key = (str(meta.get("namespace") or ""), str(meta.get("name") or ""))
        if event == "DELETED":
            self.secrets.pop(key, None)
            return
        old = self.secrets.get(key)
        self.secrets[key] = obj
        if old is None or (old.get("data") or {}) == (obj.get("data") or {}):
            return  # first sight (a listing, a restart) or not a data change
        change = Change(
            _digest(f"secret|{key[0]}/{key[1]}|{meta.get('uid')}|{meta.get('resourceVersion')}"),
            f"Secret {key[0]}/{key[1]}",
        )
        for wkey, wobj in list(self.workloads.items()):
            if wkey[1] != key[0] or opted_in(wobj) is not True:
                continue
            if key[1] in secret_names((wobj.get("spec") or {}).get("template") or {}):
                self.request(wkey, change)

    def on_spcps(self, event: str, obj: dict[str, Any]) -> None:
        meta = _meta(obj)
        key = (str(meta.get("namespace") or ""), str(meta.get("name") or ""))
        if event == "DELETED":
            self.spcps.pop(key, None)
            return
        old, new = self.spcps.get(key), _versions(obj)
        self.spcps[key] = new
        if old is None or old == new:
            return  # a new pod mounting what is current, or no new version
        status = obj.get("status") or {}
        spc = str(status.get("secretProviderClassName") or "")
        pod = str(status.get("podName") or "")
        text = ",".join(f"{i}={v}" for i, v in new)
        change = Change(
            _digest(f"spc|{key[0]}/{spc}|{text}"),
            f"SecretProviderClass {key[0]}/{spc} (objects {', '.join(i for i, _ in new)})",
        )
        self._spawn(self._from_pod(key[0], pod, change))

    async def _from_pod(self, namespace: str, pod: str, change: Change) -> None:
        try:
            wkey = await self.owner_of(namespace, pod)
        except Exception as e:
            log.log(
                logging.ERROR if is_forbidden(e) else logging.WARNING,
                "restart-on-change: pod %s/%s: owner not read: %s",
                namespace,
                pod,
                _why(e),
            )
            return
        if wkey is None:
            log.info(
                "restart-on-change: pod %s/%s has no workload owner: nothing to restart",
                namespace,
                pod,
            )
            return
        wobj = self.workloads.get(wkey)
        if wobj is not None and opted_in(wobj) is True:
            self.request(wkey, change)

    async def owner_of(self, namespace: str, pod: str) -> WKey | None:
        ref = _controller(to_dict(await self.client.get(Pod, pod, namespace=namespace)))
        if ref is not None and ref[0] == "ReplicaSet":
            rs = to_dict(await self.client.get(ReplicaSet, ref[1], namespace=namespace))
            ref = _controller(rs)
        if ref is None or ref[0] not in KINDS:
            return None
        return (ref[0], namespace, ref[1])

    # ---- acting ----------------------------------------------------------------------------

    def request(self, wkey: WKey, change: Change) -> None:
        if change.digest in self._covered(wkey):
            return  # this change has been acted on already
        pending = self._pending.setdefault(wkey, {})
        first = not pending
        if len(pending) < MAX_DIGESTS:
            pending[change.digest] = change
        if first:  # the rest of the same rotation joins it while it settles
            asyncio.get_running_loop().call_later(self.settle, self._queue.put_nowait, wkey)

    def _covered(self, wkey: WKey) -> set[str]:
        """The digests of the changes the current pod template was rolled for."""
        obj = self.workloads.get(wkey) or {}
        template = (obj.get("spec") or {}).get("template") or {}
        value = str((_meta(template).get("annotations") or {}).get(DIGEST_ANNOTATION) or "")
        return {d for d in value.split(",") if d}

    def _wait_for(self, wkey: WKey) -> float:
        now = time.monotonic()
        for k, since in list(self._in_flight.items()):
            if now - since > self.rollout_timeout:
                self._in_flight.pop(k, None)
        wait = self._last.get(wkey, -1e9) + self.min_interval - now
        if wait <= 0 and len(self._in_flight) >= self.max_in_flight and wkey not in self._in_flight:
            wait = 1.0
        return wait

    async def _worker(self) -> None:
        while True:
            wkey = await self._queue.get()
            if not self._pending.get(wkey):
                continue
            wait = self._wait_for(wkey)
            if wait > 0:
                self.metrics.restarts.labels(wkey[0], "suppressed").inc()
                log.info("restart-on-change: %s %s/%s: rate limited, in %.1fs", *wkey, wait)
                asyncio.get_running_loop().call_later(wait, self._queue.put_nowait, wkey)
                continue
            covered = self._covered(wkey)
            fresh = [c for c in self._pending.pop(wkey).values() if c.digest not in covered]
            if fresh:
                await self._restart(wkey, fresh)

    async def _restart(self, wkey: WKey, changes: list[Change]) -> None:
        kind, ns, name = wkey
        change = Change(
            ",".join(c.digest for c in changes), ", ".join(dict.fromkeys(c.what for c in changes))
        )
        patch = {
            "spec": {"template": {"metadata": {"annotations": {DIGEST_ANNOTATION: change.digest}}}}
        }
        try:
            done = to_dict(
                await self.client.patch(
                    KINDS[kind], name, patch, namespace=ns, patch_type=PatchType.MERGE
                )
            )
        except ApiError as e:
            log.error(
                "restart-on-change: %s %s/%s not restarted: %s",
                kind,
                ns,
                name,
                _why(e),
            )
            await self._event(
                wkey,
                self.workloads.get(wkey) or {},
                "Warning",
                "RestartFailed",
                f"not restarted for {change.what}: {_why(e)}",
            )
            return
        self.workloads[wkey] = done
        self._last[wkey] = time.monotonic()
        if not _rolled_out(done):
            self._in_flight[wkey] = time.monotonic()
        self.metrics.restarts.labels(kind, "restarted").inc()
        log.info("restart-on-change: %s %s/%s restarted: %s changed", kind, ns, name, change.what)
        await self._event(
            wkey,
            done,
            "Normal",
            "RestartedOnChange",
            f"rollout restart: {change.what} changed (digest {change.digest})"
            + (
                " (paused: it rolls when resumed)" if (done.get("spec") or {}).get("paused") else ""
            ),
        )

    def _warn(self, wkey: WKey, obj: Mapping[str, Any], value: str) -> None:
        message = (
            f'annotation {ANNOTATION}: "{value[:64]}" is not "true" or "false": '
            "not restarted on change"
        )
        self._spawn(self._event(wkey, obj, "Warning", "InvalidRestartOnChange", message))

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _event(
        self, wkey: WKey, obj: Mapping[str, Any], kind: str, reason: str, message: str
    ) -> None:
        ref = PodRef(wkey[2], wkey[1], str(_meta(obj).get("uid") or ""), wkey[0], "apps/v1")
        await self.events.record(ref, kind, reason, message)

    # ---- running ---------------------------------------------------------------------------

    async def run(self) -> None:
        tasks = [
            *(
                asyncio.create_task(
                    watch_forever(
                        self.client, res, self.on_workload(kind), what=kind.lower(), describe=_why
                    )
                )
                for kind, res in KINDS.items()
            ),
            asyncio.create_task(
                watch_forever(
                    self.client,
                    Secret,
                    self.on_secret,
                    what="managed secret",
                    labels={MANAGED_LABEL: "true"},
                )
            ),
            asyncio.create_task(
                watch_forever(
                    self.client,
                    Secret,
                    self.on_secret,
                    what="secretsync secret",
                    labels={CONTROLLER_LABEL: exists()},
                )
            ),
            asyncio.create_task(
                watch_forever(
                    self.client,
                    SecretProviderClassPodStatus,
                    self.on_spcps,
                    what="secretproviderclasspodstatus",
                    describe=_why,
                )
            ),
            asyncio.create_task(self._worker()),
        ]
        try:
            await asyncio.gather(*tasks)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


def _controller(obj: Mapping[str, Any]) -> tuple[str, str] | None:
    for ref in _meta(obj).get("ownerReferences") or []:
        if ref.get("controller"):
            return (str(ref.get("kind") or ""), str(ref.get("name") or ""))
    return None


__all__ = ["ANNOTATION", "DIGEST_ANNOTATION", "RestartController"]
