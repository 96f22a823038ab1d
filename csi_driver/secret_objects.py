"""`spec.secretObjects`, pure: which Secrets to write, with what data, owned by whom.

No API calls here: parsing an SPC's secretObjects (each invalid one named with its rule),
reading the mounted files a Secret's data comes from (never outside the volume), and the owner
references a synced Secret carries.
"""

from __future__ import annotations

import os
import posixpath
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from lightkube.resources.core_v1 import Pod

MAX_SECRET_SIZE = 1 << 20  # the API server's limit on the sum of a Secret's values
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


def _name_problem(name: str, kind: str, item: Mapping[str, Any]) -> str:
    if not name:
        return "secretName is empty"
    if len(name) > 253 or not _DNS_SUBDOMAIN.match(name):
        return (
            f"secretName {name!r} is not a valid Secret name (a DNS-1123 subdomain: lower "
            "case alphanumerics, '-' and '.', at most 253 characters)"
        )
    if not kind:
        return "type is empty"
    if not item.get("data"):
        return "data is empty"
    return ""


def _data_items(raw: list[Any]) -> tuple[DataItem, ...] | str:
    """The data items, or what is wrong with the first bad one."""
    items: list[DataItem] = []
    for d in raw:
        obj = str((d or {}).get("objectName") or "").strip()
        key = str((d or {}).get("key") or "").strip()
        if not obj:
            return "an objectName in data is empty"
        if not key:
            return f"the key for objectName {obj!r} is empty"
        if len(key) > 253 or not _DATA_KEY.match(key):
            return f"data key {key!r} is not valid (alphanumerics, '-', '_' or '.')"
        items.append(DataItem(obj, key))
    return tuple(items)


def _parse_one(index: int, item: Mapping[str, Any]) -> SecretObject | str:
    """One secretObject, or what is wrong with it."""
    name = str(item.get("secretName") or "").strip()
    kind = str(item.get("type") or "").strip()
    problem = _name_problem(name, kind, item)
    if problem:
        return problem
    items = _data_items(list(item.get("data") or []))
    if isinstance(items, str):
        return items
    return SecretObject(
        index=index,
        secret_name=name,
        type=kind if kind in SECRET_TYPES else "Opaque",
        labels={str(k): str(v) for k, v in (item.get("labels") or {}).items()},
        annotations={str(k): str(v) for k, v in (item.get("annotations") or {}).items()},
        data=items,
    )


def _without_duplicates(
    objects: list[SecretObject], where: str, errors: list[str]
) -> list[SecretObject]:
    """Two secretObjects writing one Secret would overwrite each other: neither is synced."""
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
    return kept


def parse_secret_objects(spc: Mapping[str, Any]) -> tuple[list[SecretObject], list[str]]:
    """The valid secretObjects of an SPC and a message for each invalid one."""
    raw = (spc.get("spec") or {}).get("secretObjects") or []
    meta = spc.get("metadata") or {}
    where = f"spc {meta.get('namespace', '')}/{meta.get('name', '')}"
    objects: list[SecretObject] = []
    errors: list[str] = []
    for i, item in enumerate(raw):
        parsed = _parse_one(i, item or {})
        if isinstance(parsed, str):
            errors.append(f"failed to validate secret object {i} in {where}, err: {parsed}")
        else:
            objects.append(parsed)
    return _without_duplicates(objects, where, errors), errors


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
            # Imported by the first TLS sync: cryptography is ~30 ms of CPU at start (0.15 s under
            # the driver's 200m) and ~10 MiB of RSS, and only kubernetes.io/tls Secrets need it.
            from . import tls_split

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


def owners_for(pod: Pod, spcps: Mapping[str, Any]) -> list[dict[str, str]]:
    """The pod's controller owners (all its owners if none is the controller), else the SPCPS."""
    refs = (pod.metadata.ownerReferences if pod.metadata is not None else None) or []
    chosen = [r for r in refs if r.controller] or refs
    if chosen:
        return [
            {"apiVersion": r.apiVersion, "kind": r.kind, "name": r.name, "uid": r.uid}
            for r in chosen
            if r.uid
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
