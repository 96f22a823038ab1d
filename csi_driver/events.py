"""Pod events: the one recorder sync and rotation post through.

Messages are cut to 1 KiB; a recorder can dedupe (one event per pod, reason and message, so a
repeated reconcile does not spam); a failure to post is logged, as an error when the driver's
RBAC forbids it (an operator's fix), never raised.
"""

from __future__ import annotations

import datetime
import logging
from dataclasses import dataclass
from typing import Any, Protocol, cast

from lightkube import AsyncClient
from lightkube.resources.core_v1 import Event

from .kube import api_error_text, is_forbidden

log = logging.getLogger(__name__)

MAX_MESSAGE = 1024
MAX_REMEMBERED = 10_000  # dedupe memory: cleared whole when it grows past this


@dataclass(frozen=True)
class PodRef:
    """The object an event is about: a pod, unless said otherwise."""

    name: str
    namespace: str
    uid: str
    kind: str = "Pod"
    api_version: str = "v1"


class EventSink(Protocol):
    async def record(self, pod: PodRef, kind: str, reason: str, message: str) -> None: ...


class NoEvents:
    """Without an API server (standalone mode): events are not posted anywhere."""

    async def record(self, pod: PodRef, kind: str, reason: str, message: str) -> None:
        return None


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class EventRecorder:
    """Posts core/v1 Events on pods as `component` from `host` (the node)."""

    def __init__(
        self,
        client: AsyncClient,
        component: str,
        host: str,
        *,
        dedupe: bool = False,
        failure_level: int = logging.WARNING,
        log_as: str = "",
    ) -> None:
        self.client = client
        self.component = component
        self.host = host
        self.dedupe = dedupe
        self.failure_level = failure_level
        # a short failure line "<log_as>: could not record event on NS/POD: …" (rotation's)
        # instead of the full one naming the event (sync's); operators grep for both
        self.log_as = log_as
        self._seen: set[tuple[str, str, str]] = set()
        self._warnings: dict[str, int] = {}  # pod uid → Warning events asked for

    def warnings(self, uid: str) -> int:
        """How many Warning events were asked for on this pod (posted or deduped)."""
        return self._warnings.get(uid, 0)

    def forget(self, uid: str) -> None:
        """All is well again for this pod: a failure that comes back is said again."""
        self._seen = {k for k in self._seen if k[0] != uid}
        self._warnings.pop(uid, None)

    async def record(self, pod: PodRef, kind: str, reason: str, message: str) -> None:
        if self.dedupe and not self._first_time(pod, kind, reason, message):
            return
        try:
            await self.client.create(
                cast(Event, Event.from_dict(self._body(pod, kind, reason, message)))
            )
        except Exception as e:
            level = logging.ERROR if is_forbidden(e) else self.failure_level
            if self.log_as:
                log.log(
                    level,
                    "%s: could not record event on %s/%s: %s",
                    self.log_as,
                    pod.namespace,
                    pod.name,
                    api_error_text(e),
                )
                return
            log.log(
                level,
                "failed to record event on pod %s/%s (%s %s: %s): %s",
                pod.namespace,
                pod.name,
                kind,
                reason,
                message[:300],
                api_error_text(e),
            )

    async def record_node(self, name: str, uid: str, kind: str, reason: str, message: str) -> None:
        """An event on a Node (the startup taint's), in `default` as kubelet posts them."""
        body = self._body(PodRef(name, "default", uid), kind, reason, message)
        body["involvedObject"] = {"apiVersion": "v1", "kind": "Node", "name": name, "uid": uid}
        try:
            await self.client.create(cast(Event, Event.from_dict(body)))
        except Exception as e:
            level = logging.ERROR if is_forbidden(e) else self.failure_level
            log.log(level, "could not record event on node %s: %s", name, api_error_text(e))

    def _first_time(self, pod: PodRef, kind: str, reason: str, message: str) -> bool:
        if kind == "Warning":
            self._warnings[pod.uid] = self._warnings.get(pod.uid, 0) + 1
        key = (pod.uid, reason, message)
        if key in self._seen:
            return False
        if len(self._seen) > MAX_REMEMBERED:
            self._seen.clear()
            self._warnings.clear()
        self._seen.add(key)
        if kind == "Warning":
            log.warning("%s %s/%s: %s", pod.kind.lower(), pod.namespace, pod.name, message)
        return True

    def _body(self, pod: PodRef, kind: str, reason: str, message: str) -> dict[str, Any]:
        now = _now()
        source = {"component": self.component}
        if self.host:
            source["host"] = self.host
        return {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {
                "generateName": f"{pod.name or pod.kind.lower()}.",
                "namespace": pod.namespace,
            },
            "involvedObject": {
                "apiVersion": pod.api_version,
                "kind": pod.kind,
                "name": pod.name,
                "namespace": pod.namespace,
                "uid": pod.uid,
            },
            "reason": reason,
            "message": message[:MAX_MESSAGE],
            "type": kind,
            "source": source,
            "reportingComponent": self.component,
            "reportingInstance": self.host,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
