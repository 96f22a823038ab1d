"""Ensure one Kubernetes Secret holds what a secretObject says: the driver's Secret writer.

Compare before writing (an idle cluster costs no write); create, update with resourceVersion
kept (a concurrent change answers 409 and we compare again), or delete and create when the type
changes or the Secret is immutable. A Secret the driver does not manage (no
`secrets-store.csi.k8s.io/managed=true`) is never taken over. Owner references are merged by
UID. The writer says what happened as an Outcome; the caller reports it (events, metrics).
"""

from __future__ import annotations

import asyncio
import base64
import enum
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, cast

from lightkube import ApiError, AsyncClient
from lightkube.resources.core_v1 import Secret

from .kube import api_error_text, to_dict
from .secret_objects import SecretObject

log = logging.getLogger(__name__)

MANAGED_LABEL = "secrets-store.csi.k8s.io/managed"
ATTEMPTS = 5  # compare-and-write rounds lost to concurrent writers before giving up for now


class Result(enum.Enum):
    CREATED = "created"
    UPDATED = "updated"
    RECREATED = "recreated"  # immutable: deleted and created again
    TYPE_CHANGED = "type changed"  # deleted and created again with the new type
    UNCHANGED = "unchanged"
    NOT_MANAGED = "not managed"  # someone else's Secret of that name: left alone
    REFUSED = "refused"  # the API server answered an error
    ERROR = "error"  # no answer (connection, timeout…)
    CONTENDED = "contended"  # every attempt lost to a concurrent writer


@dataclass(frozen=True)
class Outcome:
    result: Result
    error: str = ""  # REFUSED, ERROR: the API server's (or the client's) words
    code: int | None = None  # REFUSED: the HTTP status
    old_type: str = ""  # TYPE_CHANGED: the type the Secret had

    @property
    def written(self) -> bool:
        return self.result in (
            Result.CREATED,
            Result.UPDATED,
            Result.RECREATED,
            Result.TYPE_CHANGED,
        )

    @property
    def retry(self) -> bool:
        """A transient failure: try again later."""
        if self.result is Result.REFUSED:
            code = self.code
            return code is None or code >= 500 or code in (403, 429)
        return self.result in (Result.ERROR, Result.CONTENDED)


def _driver_owns(meta: Mapping[str, Any], owners: list[dict[str, str]]) -> bool:
    return bool((meta.get("labels") or {}).get(MANAGED_LABEL) == "true")


class Fenced(Exception):
    """The claim's fence stopped a write (the writer is no longer entitled to write, e.g. a
    controller that lost its Lease): raised through `ensure`, never an Outcome."""


async def _unfenced() -> None:
    return None


@dataclass(frozen=True)
class Claim:
    """How a writer marks the Secrets it manages and knows them again: the driver's sync by
    the managed label; another component (the SecretSync controller) by its own rule."""

    labels: Mapping[str, str] = field(default_factory=lambda: {MANAGED_LABEL: "true"})
    owns: Callable[[Mapping[str, Any], list[dict[str, str]]], bool] = _driver_owns
    recreate: bool = True  # may delete and create (type change, immutable); else refuse
    fence: Callable[[], Awaitable[None]] = _unfenced  # awaited before each write; may raise Fenced


DRIVER_CLAIM = Claim()


def merge_owners(
    existing: list[dict[str, Any]], ours: list[dict[str, str]]
) -> list[dict[str, Any]]:
    uids = {str(r.get("uid")) for r in existing}
    return list(existing) + [r for r in ours if r["uid"] not in uids]


def _b64(data: Mapping[str, bytes]) -> dict[str, str]:
    return {k: base64.b64encode(v).decode() for k, v in data.items()}


def _secret(body: Mapping[str, Any]) -> Secret:
    return cast(Secret, Secret.from_dict(dict(body)))


@dataclass(frozen=True)
class _Want:
    """What one Secret should hold."""

    namespace: str
    obj: SecretObject
    encoded: dict[str, str]
    labels: dict[str, str]
    owners: list[dict[str, str]]

    @property
    def name(self) -> str:
        return self.obj.secret_name

    def body(self, meta: Mapping[str, Any], owners: list[dict[str, Any]]) -> dict[str, Any]:
        """A new Secret, keeping the labels and annotations of `meta` (an old one's)."""
        return {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {
                "name": self.name,
                "namespace": self.namespace,
                "labels": {**(meta.get("labels") or {}), **self.labels},
                "annotations": {**(meta.get("annotations") or {}), **self.obj.annotations},
                "ownerReferences": owners,
            },
            "type": self.obj.type,
            "data": dict(self.encoded),
        }


def _no_recreate(want: _Want, why: str) -> Outcome:
    return Outcome(
        Result.REFUSED,
        f"Secret {want.namespace}/{want.name} {why}: it cannot change in place; delete it "
        "to have it created again",
        422,
    )


class SecretWriter:
    def __init__(self, client: AsyncClient, claim: Claim = DRIVER_CLAIM) -> None:
        self.client = client
        self.claim = claim
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}

    async def ensure(
        self,
        namespace: str,
        obj: SecretObject,
        data: Mapping[str, bytes],
        owners: list[dict[str, str]],
    ) -> Outcome:
        """Make Secret `namespace/obj.secret_name` hold `data`; raises only Fenced."""
        want = _Want(namespace, obj, _b64(data), {**obj.labels, **self.claim.labels}, owners)
        async with self._locks.setdefault((namespace, obj.secret_name), asyncio.Lock()):
            for _attempt in range(ATTEMPTS):
                try:
                    outcome = await self._attempt(want)
                except ApiError as e:
                    return Outcome(Result.REFUSED, api_error_text(e), e.status.code)
                except Fenced:
                    raise
                except Exception as e:
                    return Outcome(Result.ERROR, api_error_text(e))
                if outcome is not None:
                    return outcome
        return Outcome(Result.CONTENDED)

    async def _attempt(self, want: _Want) -> Outcome | None:
        """One compare-and-write; None when a concurrent writer won (compare again)."""
        try:
            existing = to_dict(await self.client.get(Secret, want.name, namespace=want.namespace))
        except ApiError as e:
            if e.status.code != 404:
                raise
            return await self._create(want)
        meta = existing.get("metadata") or {}
        if not self.claim.owns(meta, want.owners):
            return Outcome(Result.NOT_MANAGED)
        owners = merge_owners(list(meta.get("ownerReferences") or []), want.owners)
        old_type = existing.get("type") or "Opaque"
        if old_type != want.obj.type and not self.claim.recreate:
            return _no_recreate(want, f"has type {old_type}, not {want.obj.type}")
        if old_type != want.obj.type:
            if not await self._recreate(want, meta, owners):
                return None
            return Outcome(Result.TYPE_CHANGED, old_type=old_type)
        new = want.body(meta, owners)["metadata"]
        if (
            (existing.get("data") or {}) == want.encoded
            and (meta.get("labels") or {}) == new["labels"]
            and (meta.get("annotations") or {}) == new["annotations"]
            and list(meta.get("ownerReferences") or []) == owners
        ):
            return Outcome(Result.UNCHANGED)
        if existing.get("immutable") and not self.claim.recreate:
            return _no_recreate(want, "is immutable")
        if existing.get("immutable"):
            return Outcome(Result.RECREATED) if await self._recreate(want, meta, owners) else None
        return await self._replace(want, existing, new)

    async def _create(self, want: _Want) -> Outcome | None:
        await self.claim.fence()
        try:
            await self.client.create(_secret(want.body({}, want.owners)))
        except ApiError as e:
            if e.status.code == 409:
                return None  # created meanwhile (another node): compare and update
            raise
        log.info("created Secret %s/%s", want.namespace, want.name)
        return Outcome(Result.CREATED)

    async def _replace(
        self, want: _Want, existing: dict[str, Any], new_meta: Mapping[str, Any]
    ) -> Outcome | None:
        meta = existing.get("metadata") or {}
        meta["labels"] = new_meta["labels"]
        meta["annotations"] = new_meta["annotations"]
        meta["ownerReferences"] = new_meta["ownerReferences"]
        existing["metadata"] = meta
        existing["data"] = want.encoded
        existing.pop("stringData", None)
        await self.claim.fence()
        try:
            await self.client.replace(_secret(existing))
        except ApiError as e:
            if e.status.code == 409:
                return None
            raise
        log.info("updated Secret %s/%s", want.namespace, want.name)
        return Outcome(Result.UPDATED)

    async def _recreate(
        self, want: _Want, meta: Mapping[str, Any], owners: list[dict[str, Any]]
    ) -> bool:
        """Delete and create (type and immutable Secrets cannot change in place); False when
        someone else created it in between (compare again)."""
        await self.claim.fence()
        try:
            await self.client.delete(Secret, want.name, namespace=want.namespace)
        except ApiError as e:
            if e.status.code != 404:  # gone already is fine; Forbidden is said by the caller
                raise
        try:
            await self.client.create(_secret(want.body(meta, owners)))
        except ApiError as e:
            if e.status.code == 409:
                return False
            raise
        log.info("recreated Secret %s/%s with type %s", want.namespace, want.name, want.obj.type)
        return True
