"""The startup taint: `secrets-store.csi.k8s.io/agent-not-ready`, taken off this node once it
can publish.

An operator who opts in registers nodes with the taint (kubelet `--register-with-taints`, AKS
node pools `--node-taints`); both DaemonSets tolerate it, pods needing secrets do not, so they
are not scheduled (NoSchedule) or not run (NoExecute) on a node whose driver is not ready. The
driver removes the taint once (a) its CSI socket serves, (b) kubelet has registered it (the
node's CSINode lists the driver) and (c) every provider of `--startup-taint-providers` answers
Version. Removal is a JSON patch of that one taint (a `test` of its key at its index, then
`remove`): a taint added or removed meanwhile fails the test and the patch is made again, so no
other taint is ever dropped. Absent taint: nothing to do.

While something is missing the driver polls (backoff to POLL_CAP), sets the
`startup_taint_waiting{waiting_for}` gauge, and after `report_after` says what is missing once:
a Warning event on the Node and an ERROR log line.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from grpc import aio
from lightkube import ApiError, AsyncClient
from lightkube.resources.core_v1 import Node
from lightkube.resources.storage_v1 import CSINode
from lightkube.types import PatchType
from prometheus_client import Gauge

from secrets_store_api import csi_pb2, csi_pb2_grpc

from .errors import ProviderError
from .events import EventRecorder
from .kube import ROLE_TAINT, api_error_text, is_forbidden
from .metrics import Metrics
from .provider_client import ProviderClients

log = logging.getLogger(__name__)

TAINT_KEY = "secrets-store.csi.k8s.io/agent-not-ready"
REMOVED = "StartupTaintRemoved"
KEPT = "StartupTaintKept"
REPORT_AFTER = 60.0  # seconds of "not ready" before the Warning event and the ERROR line
POLL_FIRST, POLL_CAP = 0.5, 5.0  # readiness polls: quick at first, a slow node is not hammered
PATCH_CAP = 30.0  # failed patches (Forbidden, API down): back off to this


async def csi_serves(address: str) -> str:
    """ "" when the driver's own CSI endpoint answers GetPluginInfo, else what went wrong."""
    async with aio.insecure_channel(address) as channel:
        try:
            await csi_pb2_grpc.IdentityStub(channel).GetPluginInfo(
                csi_pb2.GetPluginInfoRequest(), timeout=2
            )
        except aio.AioRpcError as e:
            return f"{e.code().name}: {e.details()}"
    return ""


class StartupTaint:
    def __init__(
        self,
        client: AsyncClient,
        node: str,
        driver_name: str,
        csi_address: str,
        providers: ProviderClients,
        provider_names: tuple[str, ...],
        metrics: Metrics,
        events: EventRecorder,
        *,
        report_after: float = REPORT_AFTER,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.client = client
        self.node = node
        self.driver_name = driver_name
        self.csi_address = csi_address
        self.providers = providers
        self.provider_names = provider_names
        self.events = events
        self.report_after = report_after
        self.clock = clock
        self.sleep = sleep
        self.waiting = Gauge(
            "startup_taint_waiting",
            "1 while the startup taint stays on this node for want of this condition",
            ["waiting_for"],
            registry=metrics.registry,
        )
        self.removed = False

    async def run(self) -> None:
        """Until the taint is gone (or was never there)."""
        started = self.clock()
        delay = POLL_FIRST
        reported = False
        while True:
            node, missing = await self._missing()
            if node is not None and not _tainted(node):
                log.info("startup taint %s absent on node %s: nothing to do", TAINT_KEY, self.node)
                return
            if node is not None and not missing:
                if await self._remove(node):
                    return
                delay = min(max(delay, 1.0) * 2, PATCH_CAP)
            elif not reported and self.clock() - started >= self.report_after:
                reported = True
                await self._report(node, missing)
            await self.sleep(delay)
            delay = min(delay * 2, POLL_CAP) if delay < POLL_CAP else delay

    async def _missing(self) -> tuple[Node | None, list[str]]:
        """This node (None: unreadable) and what keeps the taint on, in words for operators."""
        try:
            node = await self.client.get(Node, self.node)
        except Exception as e:
            text = api_error_text(e, ROLE_TAINT)
            self._set({"node": True})
            log.log(_level(e), "startup taint: cannot read node %s: %s", self.node, text)
            return None, [f"node {self.node}: {text}"]
        if not _tainted(node):
            return node, []
        missing: dict[str, str] = {}
        error = await csi_serves(self.csi_address)
        if error:
            missing["csi-socket"] = f"the CSI socket {self.csi_address} does not serve ({error})"
        registered = await self._registered()
        if registered:
            missing["csinode"] = registered
        for name in self.provider_names:
            try:
                await self.providers.version(name, deadline=2)
            except ProviderError as e:
                missing[f"provider/{name}"] = f"provider {name} does not answer Version: {e}"
        self._set({k: k in missing for k in ("csi-socket", "csinode", "node")})
        self._set({f"provider/{n}": f"provider/{n}" in missing for n in self.provider_names})
        return node, list(missing.values())

    async def _registered(self) -> str:
        """ "" when kubelet lists this driver in the node's CSINode, else what is missing."""
        try:
            csinode = await self.client.get(CSINode, self.node)
        except ApiError as e:
            if e.status.code == 404:
                return f"CSINode {self.node} does not exist yet (kubelet registered no driver)"
            return f"CSINode {self.node}: {api_error_text(e, ROLE_TAINT)}"
        except Exception as e:
            return f"CSINode {self.node}: {api_error_text(e, ROLE_TAINT)}"
        drivers = [d.name for d in (csinode.spec.drivers if csinode.spec else None) or []]
        if self.driver_name in drivers:
            return ""
        return (
            f"CSINode {self.node} does not list driver {self.driver_name} (lists "
            f"{', '.join(drivers) or 'none'}): is node-driver-registrar running?"
        )

    def _set(self, states: dict[str, bool]) -> None:
        for condition, waiting in states.items():
            self.waiting.labels(condition).set(1 if waiting else 0)

    async def _remove(self, node: Node) -> bool:
        """True when the taint is gone; False to retry (logged)."""
        taints = (node.spec.taints if node.spec else None) or []
        index = next((i for i, t in enumerate(taints) if t.key == TAINT_KEY), None)
        if index is None:
            return True
        patch: list[dict[str, Any]] = [
            {"op": "test", "path": f"/spec/taints/{index}/key", "value": TAINT_KEY},
            {"op": "remove", "path": f"/spec/taints/{index}"},
        ]
        try:
            await self.client.patch(Node, self.node, patch, patch_type=PatchType.JSON)
        except Exception as e:
            log.log(
                _level(e),
                "startup taint: could not remove %s from node %s (retrying): %s",
                TAINT_KEY,
                self.node,
                api_error_text(e, ROLE_TAINT),
            )
            return False
        self.removed = True
        log.info("startup taint %s removed from node %s", TAINT_KEY, self.node)
        uid = node.metadata.uid if node.metadata else ""
        await self.events.record_node(
            self.node,
            uid or "",
            "Normal",
            REMOVED,
            f"removed taint {TAINT_KEY}: driver {self.driver_name} serves, is registered, "
            f"and providers [{', '.join(self.provider_names)}] answer",
        )
        return True

    async def _report(self, node: Node | None, missing: list[str]) -> None:
        what = "; ".join(missing)
        log.error(
            "startup taint %s kept on node %s after %.0fs: %s",
            TAINT_KEY,
            self.node,
            self.report_after,
            what,
        )
        if node is not None and node.metadata is not None:
            await self.events.record_node(
                self.node, node.metadata.uid or "", "Warning", KEPT, f"taint kept: {what}"
            )


def _tainted(node: Node) -> bool:
    taints = (node.spec.taints if node.spec else None) or []
    return any(t.key == TAINT_KEY for t in taints)


def _level(e: BaseException) -> int:
    return logging.ERROR if is_forbidden(e) else logging.WARNING
