"""What secret sync's watches have seen, and which mounts each change makes due.

Pure bookkeeping for the controller (secret_sync.py): this node's SPCPS objects, its pods'
owner references and each SPC's secretObjects; every handler answers with the SPCPS keys to
reconcile. Only what a sync decision needs is kept.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

Key = tuple[str, str]  # (namespace, name)

# What a sync decision reads of an SPCPS's metadata (reconcile, owners_for); its status is kept
# whole (a change of it is what makes a mount due). managedFields, annotations and the rest are
# dropped: they were most of what 250 mounts kept alive.
_SPCPS_META = ("name", "namespace", "uid", "labels", "deletionTimestamp")


def key_of(data: Mapping[str, Any]) -> Key:
    meta = data.get("metadata") or {}
    return (str(meta.get("namespace", "")), str(meta.get("name", "")))


class SyncIndex:
    def __init__(self) -> None:
        self._spcps: dict[Key, dict[str, Any]] = {}
        self._pods: dict[Key, list[Any]] = {}  # pod → its ownerReferences
        self._spc_objects: dict[Key, Any] = {}  # SPC → its secretObjects

    def spcps(self, key: Key) -> dict[str, Any] | None:
        return self._spcps.get(key)

    def wants_sync(self, namespace: str, spc_name: str) -> bool:
        """False only when the SPC watch says this SPC has no secretObjects (no API call)."""
        key = (namespace, spc_name)
        return key not in self._spc_objects or bool(self._spc_objects[key])

    def on_spcps(self, event: str, data: dict[str, Any]) -> list[Key]:
        key = key_of(data)
        if event == "DELETED":
            self._spcps.pop(key, None)
            return []
        old = self._spcps.get(key)
        self._spcps[key] = data = _slim(data)
        return [key] if old is None or old.get("status") != data.get("status") else []

    def on_spc(self, event: str, data: dict[str, Any]) -> list[Key]:
        """An edit of secretObjects resyncs the mounts of that SPC on this node."""
        key = key_of(data)
        objects = (data.get("spec") or {}).get("secretObjects")
        if event == "DELETED":
            self._spc_objects.pop(key, None)
            return []
        due: list[Key] = []
        if key in self._spc_objects and self._spc_objects[key] != objects:
            due = self._where(key[0], lambda s: s.get("secretProviderClassName") == key[1])
        self._spc_objects[key] = objects
        return due

    def on_secret(self, event: str, data: dict[str, Any]) -> list[Key]:
        """A managed Secret deleted while this node still mounts its SPC comes back.

        Only deletions: reacting to updates would let two nodes with different content (a
        rotation in progress) overwrite each other forever.
        """
        if event != "DELETED":
            return []
        ns, name = key_of(data)
        spcs = {
            spc
            for (spc_ns, spc), objects in self._spc_objects.items()
            if spc_ns == ns
            and any(str((o or {}).get("secretName") or "").strip() == name for o in objects or [])
        }
        return self._where(ns, lambda s: s.get("secretProviderClassName") in spcs)

    def on_pod(self, event: str, data: dict[str, Any]) -> list[Key]:
        """A new pod, or new owners (adopted by a controller): its Secrets' owners change."""
        key = key_of(data)
        if event == "DELETED":
            self._pods.pop(key, None)
            return []
        refs = (data.get("metadata") or {}).get("ownerReferences") or []
        known = key in self._pods
        old_refs = self._pods.get(key)
        self._pods[key] = refs
        if known and old_refs == refs:
            return []
        return self._where(key[0], lambda s: s.get("podName") == key[1])

    def _where(self, namespace: str, wanted: Callable[[Mapping[str, Any]], bool]) -> list[Key]:
        return [
            (ns, name)
            for (ns, name), spcps in list(self._spcps.items())
            if ns == namespace and wanted(spcps.get("status") or {})
        ]


def _slim(data: Mapping[str, Any]) -> dict[str, Any]:
    meta = data.get("metadata") or {}
    return {
        "metadata": {k: meta[k] for k in _SPCPS_META if k in meta},
        "status": data.get("status"),
    }
