"""What makes a SecretSync due, and the queue that syncs it: its own changes (generation,
so status writes do not loop), its SPC's changes, its Secret edited or deleted by someone
else (a digest of what we wrote tells our own writes apart), and the poll.

Each key is synced by one worker at a time; a key that comes due while running runs again
after; a failure comes back with backoff (1 s doubling to 60 s).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from lightkube import ApiError, AsyncClient
from lightkube.operators import exists
from lightkube.resources.core_v1 import Secret
from lightkube.types import PatchType

from csi_driver.kube import SecretProviderClass, api_error_text, to_dict, watch_forever
from csi_driver.secret_writer import Fenced

from .api import CONTROLLER_LABEL, SecretSync
from .fetch import SpcRef
from .metrics import Metrics
from .reconcile import Reconciler, data_digest

log = logging.getLogger(__name__)

Key = tuple[str, str]
MAX_BACKOFF = 60.0


async def _unfenced() -> None:
    return None


def _key(obj: Mapping[str, Any]) -> Key:
    meta = obj.get("metadata") or {}
    return (str(meta.get("namespace") or ""), str(meta.get("name") or ""))


def spc_version(spc: Mapping[str, Any]) -> str:
    """What makes an SPC a new one for a sync: its uid and generation."""
    meta = spc.get("metadata") or {}
    return f"{meta.get('uid')}/{meta.get('generation')}"


class Controller:
    def __init__(
        self,
        client: AsyncClient,
        poll: float,
        workers: int = 8,
        metrics: Metrics | None = None,
        fence: Callable[[], Awaitable[None]] = _unfenced,
    ) -> None:
        self.client = client
        self.fence = fence  # awaited before a status write; raises Fenced when we may not
        self.poll = poll
        self.workers = workers
        self.metrics = metrics or Metrics()
        self.reconciler: Reconciler | None = None
        self.syncs: dict[Key, dict[str, Any]] = {}
        self.spcs: dict[Key, dict[str, Any]] = {}
        self._queue: asyncio.Queue[Key] = asyncio.Queue()
        self._pending: set[Key] = set()
        self._running: set[Key] = set()
        self._again: set[Key] = set()
        self._spc_only: set[Key] = set()  # queued only because their SPC's watch spoke
        self._backoff: dict[Key, float] = {}

    # ---- the Status protocol of the reconciler --------------------------------------------

    async def spc(self, namespace: str, name: str) -> SpcRef:
        data = self.spcs.get((namespace, name))
        if data is None:
            try:
                data = to_dict(
                    await self.client.get(SecretProviderClass, name, namespace=namespace)
                )
            except ApiError as e:
                raise LookupError(api_error_text(e)) from None
        spec = data.get("spec") or {}
        return SpcRef(
            namespace=namespace,
            name=name,
            version=spc_version(data),
            provider=str(spec.get("provider") or ""),
            parameters={str(k): str(v) for k, v in (spec.get("parameters") or {}).items()},
        )

    async def write_status(self, sync_obj: Mapping[str, Any], status: dict[str, Any]) -> None:
        ns, name = _key(sync_obj)
        await self.fence()
        try:
            await self.client.patch(
                SecretSync.Status,
                name,
                {"status": status},
                namespace=ns,
                patch_type=PatchType.MERGE,
            )
        except Exception as e:
            log.warning("secretsync %s/%s: status not written: %s", ns, name, api_error_text(e))

    # ---- triggers --------------------------------------------------------------------------

    def enqueue(self, key: Key, spc_only: bool = False) -> None:
        """`spc_only`: the SPC's watch is the only reason, and the sync is skipped if it
        already used that SPC version (an SPC's first event may come after its syncs ran)."""
        if not spc_only:
            self._spc_only.discard(key)
        elif key not in self._pending and key not in self._again:
            self._spc_only.add(key)
        if key in self._running:
            self._again.add(key)
        else:
            self._queue_once(key)

    def _queue_once(self, key: Key) -> None:
        if key not in self._pending:
            self._pending.add(key)
            self._queue.put_nowait(key)

    def _already_synced(self, key: Key, obj: Mapping[str, Any]) -> bool:
        """This sync's last success used the SPC version the watch holds now."""
        spc_name = str((obj.get("spec") or {}).get("secretProviderClassName") or "")
        spc = self.spcs.get((key[0], spc_name))
        used = self.reconciler.spc_versions.get(key) if self.reconciler else None
        return spc is not None and used == spc_version(spc)

    def on_sync(self, event: str, obj: dict[str, Any]) -> None:
        key = _key(obj)
        if event == "DELETED":
            self.syncs.pop(key, None)
            if self.reconciler is not None:
                self.reconciler.forget(key)
            return
        old = self.syncs.get(key)
        self.syncs[key] = obj
        gen = (obj.get("metadata") or {}).get("generation")
        if old is None or (old.get("metadata") or {}).get("generation") != gen:
            self.enqueue(key)

    def on_spc(self, event: str, obj: dict[str, Any]) -> None:
        key = _key(obj)
        old = self.spcs.get(key)
        if event == "DELETED":
            self.spcs.pop(key, None)
        else:
            self.spcs[key] = obj
            if old is not None and (old.get("metadata") or {}).get("generation") == (
                obj.get("metadata") or {}
            ).get("generation"):
                return
        ns, name = key
        for skey, sobj in self.syncs.items():
            if skey[0] == ns and (sobj.get("spec") or {}).get("secretProviderClassName") == name:
                self.enqueue(skey, spc_only=True)

    def on_secret(self, event: str, obj: dict[str, Any]) -> None:
        key = _key(obj)
        if key not in self.syncs or self.reconciler is None:
            return
        if event != "DELETED":
            labels = (obj.get("metadata") or {}).get("labels") or {}
            ours = self.reconciler.digests.get(key)
            if CONTROLLER_LABEL in labels and ours == data_digest(
                self.reconciler.key, obj.get("data") or {}
            ):
                return  # our own write, or an edit that left the data as we wrote it
        log.info("secret %s/%s %s by someone else: syncing again", *key, event.lower())
        self.enqueue(key)

    # ---- running ---------------------------------------------------------------------------

    async def run(self, reconciler: Reconciler) -> None:
        self.reconciler = reconciler
        tasks = [
            asyncio.create_task(
                watch_forever(self.client, SecretSync, self.on_sync, what="secretsync")
            ),
            asyncio.create_task(
                watch_forever(
                    self.client, SecretProviderClass, self.on_spc, what="secretproviderclass"
                )
            ),
            asyncio.create_task(
                watch_forever(
                    self.client,
                    Secret,
                    self.on_secret,
                    what="secret",
                    labels={CONTROLLER_LABEL: exists()},
                )
            ),
            *(asyncio.create_task(self._worker()) for _ in range(self.workers)),
        ]
        if self.poll > 0:
            tasks.append(asyncio.create_task(self._poll()))
        try:
            await asyncio.gather(*tasks)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.poll)
            for key in list(self.syncs):
                self.enqueue(key)

    async def _worker(self) -> None:
        while True:
            key = await self._queue.get()
            self._pending.discard(key)
            spc_only = key in self._spc_only
            self._spc_only.discard(key)
            obj = self.syncs.get(key)
            if obj is None or self.reconciler is None:
                continue
            if spc_only and self._already_synced(key, obj):
                continue
            self._running.add(key)
            try:
                await self._one(key, obj)
            finally:
                self._running.discard(key)
            if key in self._again:
                self._again.discard(key)
                self._queue_once(key)  # keeps the spc_only mark of what came while running

    async def _one(self, key: Key, obj: dict[str, Any]) -> None:
        assert self.reconciler is not None
        started = time.monotonic()
        try:
            done = await self.reconciler.reconcile(obj)
        except Fenced:
            raise  # no longer the leader: the worker ends, and the process with it
        except Exception:
            log.exception("secretsync %s/%s: reconcile failed", *key)
            done = None
        self.metrics.observe(
            done.reason if done else "Exception",
            done is not None and done.ok,
            time.monotonic() - started,
        )
        if done is not None and done.ok:
            self._backoff.pop(key, None)
            return
        delay = min(self._backoff.get(key, 0.5) * 2, MAX_BACKOFF)
        self._backoff[key] = delay
        asyncio.get_running_loop().call_later(delay, self.enqueue, key)
