"""Reconcile one SecretSync: SPC → tokens → provider → data → the Secret it owns → status.

The Secret is written by the driver's writer under this controller's claim: named as the
SecretSync, labelled, owned by it alone, never taken over when someone else's; an unchanged
Secret costs no write, an unchanged status no status write. Every failure is a condition with
the Sync Controller's reason, a Warning event on the SecretSync and a metric.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from csi_driver import tls_split
from csi_driver.events import EventSink, PodRef
from csi_driver.secret_objects import MAX_SECRET_SIZE, SecretObject
from csi_driver.secret_writer import Claim, Outcome, SecretWriter
from csi_driver.secret_writer import Result as Written

from . import conditions as c
from .api import API_VERSION, CONTROLLER_LABEL, KIND, NAME_LABEL, InputError, Sync, parse
from .fetch import Fetcher, FetchError, SpcRef

log = logging.getLogger(__name__)


def owns(meta: Mapping[str, Any], owners: list[dict[str, str]]) -> bool:
    """Ours: owned by this very SecretSync (same uid), and by nothing else."""
    refs = list(meta.get("ownerReferences") or [])
    return len(refs) == 1 and refs[0].get("uid") == owners[0]["uid"]


def claim(fence: Callable[[], Awaitable[None]] | None = None) -> Claim:
    """Our Secrets; `fence` (the leader's confirmation) before each write."""
    if fence is None:
        return Claim(labels={CONTROLLER_LABEL: ""}, owns=owns, recreate=False)
    return Claim(labels={CONTROLLER_LABEL: ""}, owns=owns, recreate=False, fence=fence)


class Status(Protocol):
    async def spc(self, namespace: str, name: str) -> SpcRef: ...
    async def write_status(self, sync_obj: Mapping[str, Any], status: dict[str, Any]) -> None: ...


class Failure(Exception):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass
class Done:
    ok: bool
    reason: str
    written: bool = False


def build_data(sync: Sync, files: Mapping[str, bytes]) -> dict[str, bytes]:
    data: dict[str, bytes] = {}
    for ref in sync.data:
        content = files.get(ref.source_path)
        if content is None:
            raise Failure(
                c.FETCH_FAILED,
                f"file matching sourcePath {ref.source_path} not found in the provider's "
                f"answer (its files: {', '.join(sorted(files)) or 'none'})",
            )
        if sync.type == "kubernetes.io/tls":
            try:
                content = tls_split.tls_value(content, ref.target_key)
            except tls_split.TlsError as e:
                raise Failure(
                    c.FETCH_FAILED, f"failed to get cert data for {ref.target_key}: {e}"
                ) from None
        data[ref.target_key] = content
    size = sum(len(v) for v in data.values())
    if size > MAX_SECRET_SIZE:
        raise Failure(c.FETCH_FAILED, f"the Secret would hold {size} bytes, over 1 MiB")
    return data


def _b64(data: Mapping[str, bytes]) -> dict[str, str]:
    return {k: base64.b64encode(v).decode() for k, v in data.items()}


def data_digest(key: bytes, encoded: Mapping[str, str]) -> str:
    """A Secret's data (base64, as the API server shows it) under the process key: tells a
    watch event of our own write from someone else's edit."""
    text = json.dumps(dict(encoded), sort_keys=True).encode()
    return hmac.new(key, text, hashlib.sha256).hexdigest()


def sync_hash(key: bytes, sync: Sync, spc: SpcRef, data: Mapping[str, bytes]) -> str:
    """HMAC-SHA256 under a key only this process holds: a reader of the status cannot test
    guesses of a low-entropy value against it (the Sync Controller uses PBKDF2 for that)."""
    mac = hmac.new(key, digestmod=hashlib.sha256)
    payload = {k: data[k].hex() for k in sorted(data)}
    mac.update(json.dumps(payload, sort_keys=True).encode())
    mac.update(f"|{spc.version}|{sync.uid}|{sync.generation}|{sync.force}".encode())
    return "v1-hmac:" + mac.hexdigest()


class Reconciler:
    def __init__(
        self,
        source: Status,
        fetcher: Fetcher,
        writer: SecretWriter,
        events: EventSink,
        key: bytes,
    ) -> None:
        self.source = source
        self.fetcher = fetcher
        self.writer = writer
        self.events = events
        self.key = key
        self._forced: dict[tuple[str, str], str] = {}  # last force value synced
        self.digests: dict[tuple[str, str], str] = {}  # what each Secret holds, as we wrote it
        self.spc_versions: dict[tuple[str, str], str] = {}  # the SPC version each last synced

    def forget(self, key: tuple[str, str]) -> None:
        self._forced.pop(key, None)
        self.digests.pop(key, None)
        self.spc_versions.pop(key, None)

    async def reconcile(self, obj: Mapping[str, Any]) -> Done:
        status = dict(obj.get("status") or {})
        meta = obj.get("metadata") or {}
        generation = int(meta.get("generation") or 0)
        kind = c.UPDATE if status.get("syncHash") else c.CREATE
        conds = list(status.get("conditions") or [])
        if len(conds) < 2:
            conds = c.initial(generation)
        try:
            sync = parse(obj)
            hashed, outcome = await self._sync(sync, status)
        except (InputError, FetchError, Failure) as e:
            return await self._failed(obj, status, conds, kind, e.reason, e.message)
        if not outcome.written and outcome.result is not Written.UNCHANGED:
            text = outcome.error or outcome.result.value
            if outcome.result is Written.NOT_MANAGED:
                text = (
                    f"Secret {sync.namespace}/{sync.name} exists and is not owned by this "
                    "SecretSync alone: it is left alone (delete it, or rename the SecretSync)"
                )
            return await self._failed(
                obj,
                status,
                conds,
                kind,
                c.PATCH_ERROR,
                f'failed to patch secret "{sync.name}": {text}',
            )
        return await self._succeeded(obj, sync, status, conds, kind, hashed, outcome)

    async def _sync(self, sync: Sync, status: Mapping[str, Any]) -> tuple[str, Outcome]:
        try:
            spc = await self.source.spc(sync.namespace, sync.spc_name)
        except LookupError as e:
            raise Failure(
                c.SPC_ERROR, f'failed to get SecretProviderClass "{sync.spc_name}": {e}'
            ) from None
        fresh = self._forced.get(sync.key, sync.force) != sync.force
        files = await self.fetcher.files(spc, sync.service_account, fresh)
        data = build_data(sync, files)
        hashed = sync_hash(self.key, sync, spc, data)
        obj = SecretObject(
            0, sync.name, sync.type, {NAME_LABEL: sync.name, **sync.labels}, sync.annotations, ()
        )
        previous = self.digests.get(sync.key)
        # set before the write: its watch event can arrive before `ensure` returns, and must
        # be known as ours (else a second, needless sync and status write follow)
        self.digests[sync.key] = data_digest(self.key, _b64(data))
        outcome = await self.writer.ensure(sync.namespace, obj, data, [sync.owner()])
        if outcome.written or outcome.result is Written.UNCHANGED:
            self._forced[sync.key] = sync.force
            self.spc_versions[sync.key] = spc.version
        elif previous is None:
            self.digests.pop(sync.key, None)
        else:
            self.digests[sync.key] = previous
        return hashed, outcome

    async def _succeeded(
        self,
        obj: Mapping[str, Any],
        sync: Sync,
        status: dict[str, Any],
        conds: list[dict[str, Any]],
        kind: str,
        hashed: str,
        outcome: Outcome,
    ) -> Done:
        gen = sync.generation
        if kind == c.CREATE:
            conds = c.set_condition(
                conds, c.CREATE, "True", c.CREATE_SUCCESSFUL, c.CREATED_MESSAGE, gen
            )
        conds = c.set_condition(conds, c.UPDATE, "True", c.UP_TO_DATE, c.UPDATED_MESSAGE, gen)
        new = {**status, "conditions": conds}
        if hashed != status.get("syncHash") or outcome.written:
            new["syncHash"] = hashed
            new["lastSuccessfulSyncTime"] = c.now()
        if outcome.written:
            verb = "created" if kind == c.CREATE else "updated"
            await self._event(
                sync.namespace,
                obj,
                "Normal",
                f"Secret{verb.capitalize()}",
                f"Secret {sync.name} {verb}",
            )
        if _changed(status, new):
            await self.source.write_status(obj, new)
        return Done(True, c.UP_TO_DATE, outcome.written)

    async def _failed(
        self,
        obj: Mapping[str, Any],
        status: dict[str, Any],
        conds: list[dict[str, Any]],
        kind: str,
        reason: str,
        message: str,
    ) -> Done:
        meta = obj.get("metadata") or {}
        gen = int(meta.get("generation") or 0)
        conds = c.set_condition(conds, kind, "False", reason, message, gen)
        new = {**status, "conditions": conds}
        log.warning(
            "secretsync %s/%s: %s: %s", meta.get("namespace"), meta.get("name"), reason, message
        )
        await self._event(str(meta.get("namespace") or ""), obj, "Warning", reason, message)
        if _changed(status, new):
            await self.source.write_status(obj, new)
        return Done(False, reason)

    async def _event(
        self, namespace: str, obj: Mapping[str, Any], kind: str, reason: str, message: str
    ) -> None:
        meta = obj.get("metadata") or {}
        ref = PodRef(
            str(meta.get("name") or ""), namespace, str(meta.get("uid") or ""), KIND, API_VERSION
        )
        await self.events.record(ref, kind, reason, message)


def _changed(old: Mapping[str, Any], new: Mapping[str, Any]) -> bool:
    return json.dumps(old, sort_keys=True, default=str) != json.dumps(
        new, sort_keys=True, default=str
    )
