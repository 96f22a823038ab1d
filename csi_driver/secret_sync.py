"""Mirrors SecretProviderClass `spec.secretObjects` into Kubernetes Secrets.

Triggered by this node's SecretProviderClassPodStatus objects (a watch, label filter), by its
Pods (a watch, field selector), and right after a first publish (so the Secret exists before
the pod's containers start). No timer: an idle cluster costs no write and no read.

Each sync compares before it writes. Owners are the pod's controllers (or, for a bare pod, its
SPCPS), set in the write that creates the Secret and merged by UID on every update, so the
Secret lives exactly as long as a consumer can exist and garbage collection removes it after.
A Secret the driver does not manage (no `secrets-store.csi.k8s.io/managed=true`) is never
taken over. Every failure is a Warning event on the pod.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import logging
import os
import posixpath
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, cast

from lightkube import ApiError, AsyncClient
from lightkube.models.authorization_v1 import ResourceAttributes, SelfSubjectAccessReviewSpec
from lightkube.resources.authorization_v1 import SelfSubjectAccessReview
from lightkube.resources.core_v1 import Event, Pod, Secret

from . import mounter, tls_split
from .kube import (
    NODE_LABEL,
    SecretProviderClass,
    SecretProviderClassPodStatus,
    api_error_text,
    is_forbidden,
)
from .metrics import Metrics

log = logging.getLogger(__name__)

MANAGED_LABEL = "secrets-store.csi.k8s.io/managed"
CSI_DRIVER = "secrets-store.csi.k8s.io"
COMPONENT = "csi-secrets-store-controller"
FAILED_TO_CREATE = "FailedToCreateSecret"  # upstream's reason
TYPE_CHANGED = "SecretTypeChanged"
WATCH_FORBIDDEN = "SecretSyncWatchForbidden"
MAX_SECRET_SIZE = 1 << 20  # the API server's limit on the sum of a Secret's values
RBAC_HINT = (
    "the driver's ServiceAccount needs the secretprovidersyncing-role ClusterRole and its "
    "binding (daemonset/rbac.yaml: secrets create, get, watch, update, delete)"
)
SPCPS_API = "secrets-store.csi.x-k8s.io/v1"

# https://kubernetes.io/docs/concepts/configuration/secret/#secret-types; others become Opaque
# (upstream's GetSecretType).
SECRET_TYPES = frozenset(
    {
        "Opaque",
        "kubernetes.io/service-account-token",
        "kubernetes.io/dockercfg",
        "kubernetes.io/dockerconfigjson",
        "kubernetes.io/basic-auth",
        "kubernetes.io/ssh-auth",
        "kubernetes.io/tls",
        "bootstrap.kubernetes.io/token",
    }
)
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_DATA_KEY = re.compile(r"^[-._a-zA-Z0-9]+$")
_TARGET = re.compile(r"/pods/([^/]+)/volumes/kubernetes\.io~csi/([^/]+)/mount/?$")


class SyncError(Exception):
    """One secretObject cannot be synced; the message goes into a pod event (no secret data)."""


@dataclass(frozen=True)
class DataItem:
    object_name: str
    key: str


@dataclass(frozen=True)
class SecretObject:
    index: int
    secret_name: str
    type: str
    labels: Mapping[str, str]
    annotations: Mapping[str, str]
    data: tuple[DataItem, ...]


def parse_secret_objects(spc: Mapping[str, Any]) -> tuple[list[SecretObject], list[str]]:
    """The valid secretObjects of an SPC and a message for each invalid one."""
    raw = (spc.get("spec") or {}).get("secretObjects") or []
    meta = spc.get("metadata") or {}
    where = f"spc {meta.get('namespace', '')}/{meta.get('name', '')}"
    objects: list[SecretObject] = []
    errors: list[str] = []
    for i, item in enumerate(raw):
        item = item or {}
        name = str(item.get("secretName") or "").strip()
        kind = str(item.get("type") or "").strip()
        problem = ""
        if not name:
            problem = "secretName is empty"
        elif len(name) > 253 or not _DNS_SUBDOMAIN.match(name):
            problem = (
                f"secretName {name!r} is not a valid Secret name (a DNS-1123 subdomain: lower "
                "case alphanumerics, '-' and '.', at most 253 characters)"
            )
        elif not kind:
            problem = "type is empty"
        elif not item.get("data"):
            problem = "data is empty"
        items: list[DataItem] = []
        for d in item.get("data") or []:
            if problem:
                break
            obj, key = (
                str((d or {}).get("objectName") or "").strip(),
                str((d or {}).get("key") or "").strip(),
            )
            if not obj:
                problem = "an objectName in data is empty"
            elif not key:
                problem = f"the key for objectName {obj!r} is empty"
            elif len(key) > 253 or not _DATA_KEY.match(key):
                problem = f"data key {key!r} is not valid (alphanumerics, '-', '_' or '.')"
            else:
                items.append(DataItem(obj, key))
        if problem:
            errors.append(f"failed to validate secret object {i} in {where}, err: {problem}")
            continue
        objects.append(
            SecretObject(
                index=i,
                secret_name=name,
                type=kind if kind in SECRET_TYPES else "Opaque",
                labels={str(k): str(v) for k, v in (item.get("labels") or {}).items()},
                annotations={str(k): str(v) for k, v in (item.get("annotations") or {}).items()},
                data=tuple(items),
            )
        )
    by_name: dict[str, list[SecretObject]] = {}
    for o in objects:
        by_name.setdefault(o.secret_name, []).append(o)
    kept = []
    for o in objects:
        same = by_name[o.secret_name]
        if len(same) == 1:
            kept.append(o)
        elif o is same[0]:
            errors.append(
                f"secretObjects {', '.join(str(s.index) for s in same)} in {where} all write "
                f"Secret {o.secret_name}: none of them is synced (merge them into one)"
            )
    return kept, errors


def volume_of(target_path: str) -> tuple[str, str] | None:
    """(pod uid, volume name) of a kubelet-shaped target path, else None."""
    m = _TARGET.search(posixpath.normpath(target_path))
    return (m.group(1), m.group(2)) if m else None


def read_mounted(target: str, object_name: str) -> bytes:
    """A mounted file's bytes; the name must be a clean relative path that stays inside."""
    if (
        object_name.startswith("/")
        or posixpath.normpath(object_name) != object_name
        or object_name.split("/")[0] == ".."
        or object_name.startswith("..")
    ):
        raise SyncError(f"objectName {object_name!r} is not a clean relative path")
    root = os.path.realpath(target)
    path = os.path.realpath(os.path.join(target, object_name))
    if not path.startswith(root + os.sep):
        raise SyncError(f"objectName {object_name!r} points outside the volume")
    try:
        with open(path, "rb") as f:
            return f.read(MAX_SECRET_SIZE + 1)
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        raise SyncError(
            f"file matching objectName {object_name} not found in the pod (objectName is the "
            "mounted file name: the objectAlias if one is set)"
        ) from None
    except OSError as e:
        raise SyncError(f"failed to read objectName {object_name}: {e.strerror}") from None


def build_data(obj: SecretObject, target: str) -> dict[str, bytes]:
    """The Secret's data from the mounted files (blocking: run in a thread)."""
    data: dict[str, bytes] = {}
    contents: dict[str, bytes] = {}
    for item in obj.data:
        if item.object_name not in contents:
            contents[item.object_name] = read_mounted(target, item.object_name)
        content = contents[item.object_name]
        if obj.type == "kubernetes.io/tls":
            try:
                content = tls_split.tls_value(content, item.key)
            except tls_split.TlsError as e:
                raise SyncError(
                    f"failed to get {item.key} from objectName {item.object_name} for "
                    f"kubernetes.io/tls Secret {obj.secret_name}: {e}"
                ) from None
        data[item.key] = content
    size = sum(len(v) for v in data.values())
    if size > MAX_SECRET_SIZE:
        raise SyncError(
            f"Secret {obj.secret_name} would hold {size} bytes, over the 1 MiB "
            f"({MAX_SECRET_SIZE} bytes) limit of a Kubernetes Secret"
        )
    return data


def owners_for(pod: Mapping[str, Any], spcps: Mapping[str, Any]) -> list[dict[str, str]]:
    """The pod's controller owners (all its owners if none is the controller), else the SPCPS."""
    refs = (pod.get("metadata") or {}).get("ownerReferences") or []
    chosen = [r for r in refs if r.get("controller")] or refs
    if chosen:
        return [
            {k: str(r[k]) for k in ("apiVersion", "kind", "name", "uid")}
            for r in chosen
            if r.get("uid")
        ]
    meta = spcps.get("metadata") or {}
    return [
        {
            "apiVersion": SPCPS_API,
            "kind": "SecretProviderClassPodStatus",
            "name": str(meta.get("name", "")),
            "uid": str(meta.get("uid", "")),
        }
    ]


def merge_owners(
    existing: list[dict[str, Any]], ours: list[dict[str, str]]
) -> list[dict[str, Any]]:
    uids = {str(r.get("uid")) for r in existing}
    return list(existing) + [r for r in ours if r["uid"] not in uids]


def _b64(data: Mapping[str, bytes]) -> dict[str, str]:
    return {k: base64.b64encode(v).decode() for k, v in data.items()}


def _to_dict(obj: Any) -> dict[str, Any]:
    d: dict[str, Any] = obj.to_dict() if hasattr(obj, "to_dict") else dict(obj)
    return d


def _secret(body: Mapping[str, Any]) -> Secret:
    return cast(Secret, Secret.from_dict(dict(body)))


def _event_obj(body: Mapping[str, Any]) -> Event:
    return cast(Event, Event.from_dict(dict(body)))


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class SecretSync:
    """The sync controller of one node."""

    def __init__(
        self,
        client: AsyncClient | None,
        node_id: str,
        metrics: Metrics,
        mounts: Mapping[str, Any] | None = None,
    ) -> None:
        self.client = client
        self.node_id = node_id
        self.metrics = metrics
        self._mounts = mounts  # target path (normalised) → mount record: what we mounted
        self._spcps: dict[tuple[str, str], dict[str, Any]] = {}
        self._pods: dict[tuple[str, str], list[Any]] = {}  # pod → its ownerReferences
        self._spc_objects: dict[tuple[str, str], Any] = {}  # SPC → its secretObjects
        self._queue: asyncio.Queue[tuple[str, str]] = asyncio.Queue()
        self._queued: set[tuple[str, str]] = set()
        self._retry: dict[tuple[str, str], float] = {}
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}
        self._events: set[tuple[str, str, str]] = set()
        self._warnings: dict[str, int] = {}  # pod uid → Warning events asked for
        self._tasks: list[asyncio.Task[Any]] = []
        # resource → the Forbidden text of its watch: what sync cannot follow (pod events)
        self._watch_denied: dict[str, str] = {}

    # ---- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        if self.client is None or not self.node_id or self._tasks:
            return
        self._tasks = [
            asyncio.create_task(
                self._watch(
                    SecretProviderClassPodStatus, self._on_spcps, labels={NODE_LABEL: self.node_id}
                ),
                name="sync-spcps-watch",
            ),
            asyncio.create_task(
                self._watch(Pod, self._on_pod, fields={"spec.nodeName": self.node_id}),
                name="sync-pod-watch",
            ),
            asyncio.create_task(
                self._watch(SecretProviderClass, self._on_spc), name="sync-spc-watch"
            ),
            asyncio.create_task(
                self._watch(Secret, self._on_secret, labels={MANAGED_LABEL: "true"}),
                name="sync-secret-watch",
            ),
            asyncio.create_task(self._worker(), name="sync-worker"),
            asyncio.create_task(self.check_rbac(), name="sync-rbac-check"),
        ]

    async def check_rbac(self) -> list[str]:
        """The Secret verbs the driver lacks, said once at start (one review per verb)."""
        assert self.client is not None

        async def allowed(verb: str) -> bool:
            assert self.client is not None
            review = SelfSubjectAccessReview(
                spec=SelfSubjectAccessReviewSpec(
                    resourceAttributes=ResourceAttributes(verb=verb, resource="secrets")
                )
            )
            try:
                result = await self.client.create(review)
            except Exception as e:
                log.warning("secret sync: cannot review the driver's RBAC: %s", api_error_text(e))
                return True
            return bool(result.status is not None and result.status.allowed)

        verbs = ("get", "create", "update", "delete")
        answers = await asyncio.gather(*(allowed(v) for v in verbs))
        missing = [v for v, ok in zip(verbs, answers, strict=True) if not ok]
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

    async def _watch(
        self, res: Any, handler: Callable[[str, dict[str, Any]], None], **kw: Any
    ) -> None:
        assert self.client is not None
        delay = 0.5
        while True:
            try:
                async for event, obj in self.client.watch(res, namespace="*", **kw):
                    self._watch_denied.pop(res.__name__, None)
                    handler(event, _to_dict(obj))
                    delay = 0.5
            except asyncio.CancelledError:
                raise
            except Exception as e:
                text = api_error_text(e)
                if is_forbidden(e):
                    # not a blip: what this watch triggers (a deleted Secret coming back, an
                    # SPC edit, a pod adopted) will not happen until RBAC is fixed
                    self._watch_denied[res.__name__] = text
                log.log(
                    logging.ERROR if is_forbidden(e) else logging.WARNING,
                    "secret sync: %s watch interrupted (%s); retrying in %.1fs",
                    res.__name__,
                    text,
                    delay,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)

    def _on_spcps(self, event: str, data: dict[str, Any]) -> None:
        meta = data.get("metadata") or {}
        key = (str(meta.get("namespace", "")), str(meta.get("name", "")))
        if event == "DELETED":
            self._spcps.pop(key, None)
            return
        old = self._spcps.get(key)
        self._spcps[key] = data
        if old is None or old.get("status") != data.get("status"):
            self._enqueue(key)

    def _on_spc(self, event: str, data: dict[str, Any]) -> None:
        """An edit of secretObjects resyncs the mounts of that SPC on this node."""
        meta = data.get("metadata") or {}
        key = (str(meta.get("namespace", "")), str(meta.get("name", "")))
        objects = (data.get("spec") or {}).get("secretObjects")
        if event == "DELETED":
            self._spc_objects.pop(key, None)
            return
        if key in self._spc_objects and self._spc_objects[key] != objects:
            for (ns, name), spcps in list(self._spcps.items()):
                status = spcps.get("status") or {}
                if ns == key[0] and status.get("secretProviderClassName") == key[1]:
                    self._enqueue((ns, name))
        self._spc_objects[key] = objects

    def _on_secret(self, event: str, data: dict[str, Any]) -> None:
        """A managed Secret deleted while this node still mounts its SPC comes back.

        Only deletions: reacting to updates would let two nodes with different content (a
        rotation in progress) overwrite each other forever.
        """
        if event != "DELETED":
            return
        meta = data.get("metadata") or {}
        ns, name = str(meta.get("namespace", "")), str(meta.get("name", ""))
        spcs = {
            spc
            for (spc_ns, spc), objects in self._spc_objects.items()
            if spc_ns == ns
            and any(str((o or {}).get("secretName") or "").strip() == name for o in objects or [])
        }
        for (spcps_ns, spcps_name), spcps in list(self._spcps.items()):
            status = spcps.get("status") or {}
            if spcps_ns == ns and status.get("secretProviderClassName") in spcs:
                self._enqueue((spcps_ns, spcps_name))

    def _on_pod(self, event: str, data: dict[str, Any]) -> None:
        meta = data.get("metadata") or {}
        key = (str(meta.get("namespace", "")), str(meta.get("name", "")))
        if event == "DELETED":
            self._pods.pop(key, None)
            return
        refs = meta.get("ownerReferences") or []
        known = key in self._pods
        old_refs = self._pods.get(key)
        self._pods[key] = refs
        if not known or old_refs != refs:
            for (ns, name), spcps in list(self._spcps.items()):
                if ns == key[0] and (spcps.get("status") or {}).get("podName") == key[1]:
                    self._enqueue((ns, name))

    def _enqueue(self, key: tuple[str, str]) -> None:
        if key not in self._queued:
            self._queued.add(key)
            self._queue.put_nowait(key)

    async def _worker(self) -> None:
        while True:
            key = await self._queue.get()
            self._queued.discard(key)
            spcps = self._spcps.get(key)
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

    def _requeue(self, key: tuple[str, str]) -> None:
        if key in self._spcps:
            self._enqueue(key)

    def _wants_sync(self, namespace: str, spc_name: str) -> bool:
        """False only when the SPC watch says this SPC has no secretObjects (no API call)."""
        key = (namespace, spc_name)
        return key not in self._spc_objects or bool(self._spc_objects[key])

    async def sync_now(self, record: Any) -> None:
        """After a first publish: sync before the pod's containers start. Never raises."""
        if self.client is None or not self._wants_sync(record.namespace, record.spc_name):
            return
        try:
            async with asyncio.timeout(10):
                ns = record.namespace
                answers = await asyncio.gather(  # one round trip, not three
                    self._get(SecretProviderClassPodStatus, record.name, ns),
                    self._get(SecretProviderClass, record.spc_name, ns),
                    self._get(Pod, record.pod_name, ns),
                    return_exceptions=True,
                )
                spc = answers[1]
                if isinstance(spc, dict) and not (spc.get("spec") or {}).get("secretObjects"):
                    return  # nothing to sync: a failed read of the others does not matter
                for answer in answers:
                    if isinstance(answer, BaseException):
                        raise answer
                spcps, pod = answers[0], answers[2]
                if isinstance(spcps, dict):
                    await self.reconcile(spcps, (spc, pod))  # type: ignore[arg-type]
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
            pod_ref = {
                "metadata": {
                    "name": record.pod_name,
                    "namespace": record.namespace,
                    "uid": record.pod_uid,
                }
            }
            await self._event(
                pod_ref, "Warning", FAILED_TO_CREATE, f"failed to sync secretObjects: {text}"
            )

    # ---- one SPCPS -------------------------------------------------------------------------

    async def _get(self, res: Any, name: str, namespace: str) -> dict[str, Any] | None:
        """The object as a dict; None if it does not exist."""
        assert self.client is not None
        try:
            return _to_dict(await self.client.get(res, name, namespace=namespace))
        except ApiError as e:
            if e.status.code == 404:
                return None
            raise

    async def reconcile(
        self,
        spcps: Mapping[str, Any],
        fetched: tuple[dict[str, Any] | None, dict[str, Any] | None] | None = None,
    ) -> bool:
        """Sync every secretObject of one mount; True when a transient failure wants a retry.

        `fetched`: its SPC and pod, when the caller already read them.
        """
        assert self.client is not None
        meta = spcps.get("metadata") or {}
        status = spcps.get("status") or {}
        ns = str(meta.get("namespace", ""))
        if (meta.get("labels") or {}).get(NODE_LABEL) != self.node_id or meta.get(
            "deletionTimestamp"
        ):
            return False
        pod_name = str(status.get("podName", ""))
        spc_name = str(status.get("secretProviderClassName", ""))
        target = str(status.get("targetPath", ""))
        if not self._wants_sync(ns, spc_name):
            return False
        if fetched is None:
            try:  # the pod not from the watch cache: one just deleted must not bring it back
                fetched = await asyncio.gather(
                    self._get(SecretProviderClass, spc_name, ns), self._get(Pod, pod_name, ns)
                )
            except ApiError as e:
                log.log(
                    logging.ERROR if is_forbidden(e) else logging.WARNING,
                    "secret sync of pod %s/%s: %s",
                    ns,
                    pod_name,
                    api_error_text(e),
                )
                return True
        spc, pod = fetched
        if spc is None or pod is None or not (spc.get("spec") or {}).get("secretObjects"):
            return False
        pmeta = pod.get("metadata") or {}
        if pmeta.get("deletionTimestamp") or (pod.get("status") or {}).get("phase") in (
            "Succeeded",
            "Failed",
        ):
            return False
        problem = self._check_target(pod, spc_name, target)
        if not problem and not await self._mounted_here(target):
            problem = f"target path of pod {ns}/{pod_name} is not a volume mounted on this node"
        if problem:
            log.warning("secret sync: %s", problem)
            await self._event(pod, "Warning", FAILED_TO_CREATE, problem)
            return False
        for resource, text in sorted(self._watch_denied.items()):
            await self._event(
                pod,
                "Warning",
                WATCH_FORBIDDEN,
                f"secret sync cannot watch {resource} objects, so changes after this mount are "
                f"not followed: {text}",
            )
        objects, errors = parse_secret_objects(spc)
        uid = str(pmeta.get("uid", ""))
        warnings = self._warnings.get(uid, 0)
        for message in errors:
            await self._event(pod, "Warning", FAILED_TO_CREATE, message)
        owners = owners_for(pod, spcps)
        provider = str((spc.get("spec") or {}).get("provider") or "")
        retry = False
        for obj in objects:
            try:
                data = await asyncio.to_thread(build_data, obj, target)
            except SyncError as e:
                await self._event(
                    pod,
                    "Warning",
                    FAILED_TO_CREATE,
                    f"failed to get data in spc {ns}/{spc_name} for secret "
                    f"{obj.secret_name}, err: {e}",
                )
                continue
            lock = self._locks.setdefault((ns, obj.secret_name), asyncio.Lock())
            async with lock:
                retry |= await self._apply(pod, ns, provider, obj, data, owners)
        if not retry and self._warnings.get(uid, 0) == warnings:
            # all good: a failure that comes back later is said again
            self._events = {k for k in self._events if k[0] != uid}
            self._warnings.pop(uid, None)
        return retry

    def _check_target(self, pod: Mapping[str, Any], spc_name: str, target: str) -> str:
        """Why the SPCPS's target path is not this pod's volume of this SPC ('' if it is)."""
        meta = pod.get("metadata") or {}
        where = f"pod {meta.get('namespace', '')}/{meta.get('name', '')}"
        vol = volume_of(target)
        if vol is None or vol[0] != meta.get("uid"):
            return f"secret provider class pod status targetPath did not match pod UID for {where}"
        volumes = (pod.get("spec") or {}).get("volumes") or []
        for v in volumes:
            csi = v.get("csi") or {}
            if (
                v.get("name") == vol[1]
                and csi.get("driver") == CSI_DRIVER
                and (csi.get("volumeAttributes") or {}).get("secretProviderClass") == spc_name
            ):
                break
        else:
            return (
                "secret provider class pod status volume name did not match a volume of "
                f"{where} using secretProviderClass {spc_name}"
            )
        return ""

    async def _mounted_here(self, target: str) -> bool:
        """In the driver's mount table; else (a restart that could not recover it from the API
        server) at least a mount point on this node."""
        if self._mounts is None or posixpath.normpath(target) in self._mounts:
            return True
        try:
            return await asyncio.to_thread(mounter.is_mount_point, target)
        except OSError:
            return False

    async def _apply(
        self,
        pod: Mapping[str, Any],
        ns: str,
        provider: str,
        obj: SecretObject,
        data: Mapping[str, bytes],
        owners: list[dict[str, str]],
    ) -> bool:
        """Create or update one Secret if it differs; True to retry later."""
        assert self.client is not None
        started = time.monotonic()
        name = obj.secret_name
        labels = {**obj.labels, MANAGED_LABEL: "true"}
        encoded = _b64(data)
        for _attempt in range(5):
            try:
                try:
                    existing: dict[str, Any] | None = _to_dict(
                        await self.client.get(Secret, name, namespace=ns)
                    )
                except ApiError as e:
                    if e.status.code != 404:
                        raise
                    existing = None
                if existing is None:
                    body = {
                        "apiVersion": "v1",
                        "kind": "Secret",
                        "metadata": {
                            "name": name,
                            "namespace": ns,
                            "labels": labels,
                            "annotations": dict(obj.annotations),
                            "ownerReferences": owners,
                        },
                        "type": obj.type,
                        "data": encoded,
                    }
                    try:
                        await self.client.create(_secret(body))
                    except ApiError as e:
                        if e.status.code == 409:
                            continue  # created meanwhile (another node): compare and update
                        raise
                    log.info("created Secret %s/%s", ns, name)
                    self._synced(provider, started)
                    return False
                emeta = existing.get("metadata") or {}
                if (emeta.get("labels") or {}).get(MANAGED_LABEL) != "true":
                    await self._event(
                        pod,
                        "Warning",
                        FAILED_TO_CREATE,
                        f"Secret {ns}/{name} exists and is not managed by the driver (no label "
                        f"{MANAGED_LABEL}=true): it is left as it is; rename secretName or "
                        "delete that Secret",
                    )
                    return False
                merged_owners = merge_owners(list(emeta.get("ownerReferences") or []), owners)
                if (existing.get("type") or "Opaque") != obj.type:
                    if not await self._recreate(existing, labels, obj, encoded, merged_owners):
                        continue
                    await self._event(
                        pod,
                        "Normal",
                        TYPE_CHANGED,
                        f"Secret {ns}/{name} had type {existing.get('type') or 'Opaque'} and "
                        f"secretObjects asks for {obj.type}: the type cannot change, so the "
                        "Secret was deleted and created again",
                    )
                    self._synced(provider, started)
                    return False
                new_labels = {**(emeta.get("labels") or {}), **labels}
                new_ann = {**(emeta.get("annotations") or {}), **obj.annotations}
                if (
                    (existing.get("data") or {}) == encoded
                    and (emeta.get("labels") or {}) == new_labels
                    and (emeta.get("annotations") or {}) == new_ann
                    and list(emeta.get("ownerReferences") or []) == merged_owners
                ):
                    return False  # in sync: no write
                if existing.get("immutable"):
                    if not await self._recreate(existing, labels, obj, encoded, merged_owners):
                        continue
                    self._synced(provider, started)
                    return False
                emeta["labels"] = new_labels
                emeta["annotations"] = new_ann
                emeta["ownerReferences"] = merged_owners
                existing["metadata"] = emeta
                existing["data"] = encoded
                existing.pop("stringData", None)
                try:
                    # resourceVersion kept: a concurrent change answers 409 and we compare again
                    await self.client.replace(_secret(existing))
                except ApiError as e:
                    if e.status.code == 409:
                        continue
                    raise
                log.info("updated Secret %s/%s", ns, name)
                self._synced(provider, started)
                return False
            except ApiError as e:
                code = e.status.code
                text = api_error_text(e)
                if code == 403:  # the text names the verb and the ClusterRole that grants it
                    log.error("secret sync forbidden: %s", text)
                    await self._event(
                        pod,
                        "Warning",
                        FAILED_TO_CREATE,
                        f"failed to sync Secret {ns}/{name}: {text}",
                    )
                    return True
                await self._event(
                    pod, "Warning", FAILED_TO_CREATE, f"failed to sync Secret {ns}/{name}: {text}"
                )
                return code is None or code >= 500 or code == 429
            except Exception as e:
                log.warning("secret sync of %s/%s: %s", ns, name, api_error_text(e))
                return True
        return True

    async def _recreate(
        self,
        existing: Mapping[str, Any],
        labels: Mapping[str, str],
        obj: SecretObject,
        encoded: Mapping[str, str],
        owners: list[dict[str, Any]],
    ) -> bool:
        """Delete and create (type and immutable Secrets cannot change in place); False when
        someone else created it in between (compare again)."""
        assert self.client is not None
        emeta = existing.get("metadata") or {}
        ns, name = str(emeta.get("namespace")), str(emeta.get("name"))
        try:
            await self.client.delete(Secret, name, namespace=ns)
        except ApiError as e:
            if e.status.code != 404:  # gone already is fine; Forbidden is said by the caller
                raise
        body = {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {
                "name": name,
                "namespace": ns,
                "labels": {**(emeta.get("labels") or {}), **labels},
                "annotations": {**(emeta.get("annotations") or {}), **obj.annotations},
                "ownerReferences": owners,
            },
            "type": obj.type,
            "data": dict(encoded),
        }
        try:
            await self.client.create(_secret(body))
        except ApiError as e:
            if e.status.code == 409:
                return False
            raise
        log.info("recreated Secret %s/%s with type %s", ns, name, obj.type)
        return True

    def _synced(self, provider: str, started: float) -> None:
        self.metrics.secret_synced(provider, time.monotonic() - started)

    async def _event(self, pod: Mapping[str, Any], kind: str, reason: str, message: str) -> None:
        """One event per (pod, reason, message): a repeated reconcile does not spam."""
        assert self.client is not None
        meta = pod.get("metadata") or {}
        uid = str(meta.get("uid", ""))
        if kind == "Warning":
            self._warnings[uid] = self._warnings.get(uid, 0) + 1
        key = (uid, reason, message)
        if key in self._events:
            return
        if len(self._events) > 10_000:
            self._events.clear()
            self._warnings.clear()
        self._events.add(key)
        if kind == "Warning":
            log.warning("pod %s/%s: %s", meta.get("namespace"), meta.get("name"), message)
        now = _now()
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {
                "generateName": f"{meta.get('name', 'pod')}.",
                "namespace": meta.get("namespace", ""),
            },
            "involvedObject": {
                "apiVersion": "v1",
                "kind": "Pod",
                "name": meta.get("name", ""),
                "namespace": meta.get("namespace", ""),
                "uid": uid,
            },
            "reason": reason,
            "message": message[:1024],
            "type": kind,
            "source": {"component": COMPONENT, "host": self.node_id},
            "reportingComponent": COMPONENT,
            "reportingInstance": self.node_id,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        try:
            await self.client.create(_event_obj(body))
        except Exception as e:
            log.log(
                logging.ERROR if is_forbidden(e) else logging.WARNING,
                "failed to record event on pod %s/%s (%s %s: %s): %s",
                meta.get("namespace"),
                meta.get("name"),
                kind,
                reason,
                message[:300],
                api_error_text(e),
            )
