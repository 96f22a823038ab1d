"""The SecretSync API, parsed once: the resource, reserved names, and a frozen `Sync`.

The CRD (daemonset/sync-controller/crd-secretsyncs.yaml) already refuses what its patterns and
CEL rules refuse; the checks here repeat only what an older CRD or a disabled rule could let
through, with the Sync Controller's condition reasons.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from lightkube.generic_resource import create_namespaced_resource

GROUP = "secret-sync.x-k8s.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "SecretSync"
SecretSync = create_namespaced_resource(GROUP, VERSION, KIND, "secretsyncs")

RESERVED = "secrets-store.sync.x-k8s.io"  # label and annotation prefix kept for the controller
CONTROLLER_LABEL = RESERVED  # value "": what the Sync Controller sets and its policies check
NAME_LABEL = f"{RESERVED}/secretsync"  # value: the SecretSync's name (its API documentation)
FIELD_MANAGER = "secrets-store-sync-controller"

_KEY = re.compile(r"^[A-Za-z0-9.]([-A-Za-z0-9]+([-._a-zA-Z0-9]?[A-Za-z0-9])*)?(\/([0-9]+))*$")


class InputError(Exception):
    """The SecretSync asks for what cannot be done; `reason` is the condition's."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class DataRef:
    source_path: str
    target_key: str


@dataclass(frozen=True)
class Sync:
    """One SecretSync, as the controller works with it."""

    namespace: str
    name: str
    uid: str
    generation: int
    spc_name: str
    service_account: str
    type: str
    data: tuple[DataRef, ...]
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)
    force: str = ""

    @property
    def key(self) -> tuple[str, str]:
        return (self.namespace, self.name)

    def owner(self) -> dict[str, str]:
        return {"apiVersion": API_VERSION, "kind": KIND, "name": self.name, "uid": self.uid}


def _strings(value: Any) -> dict[str, str]:
    return {str(k): str(v) for k, v in (value or {}).items()}


def _reserved(keys: Mapping[str, str], what: str, reason: str) -> None:
    for k in keys:
        if k.startswith(RESERVED):
            raise InputError(
                reason, f"{what} {k} is reserved for use by the Secrets Store Sync Controller"
            )


def _data(raw: Any) -> tuple[DataRef, ...]:
    refs = []
    for item in raw or []:
        source = str((item or {}).get("sourcePath") or "").strip()
        target = str((item or {}).get("targetKey") or "").strip()
        for name, value in (("sourcePath", source), ("targetKey", target)):
            if not value or len(value) > 253 or not _KEY.match(value):
                raise InputError(
                    "ControllerSyncError", f"{name} {value!r} in secretObject.data is not valid"
                )
        refs.append(DataRef(source, target))
    if not refs:
        raise InputError("ControllerSyncError", "secretObject.data is empty")
    return tuple(refs)


def parse(obj: Mapping[str, Any]) -> Sync:
    """A SecretSync from the API server's JSON; InputError names what is wrong."""
    meta = obj.get("metadata") or {}
    spec = obj.get("spec") or {}
    secret = spec.get("secretObject") or {}
    labels = _strings(secret.get("labels"))
    annotations = _strings(secret.get("annotations"))
    _reserved(labels, "label", "InvalidClusterSecretLabelError")
    _reserved(annotations, "annotation", "InvalidClusterSecretAnnotationError")
    return Sync(
        namespace=str(meta.get("namespace") or ""),
        name=str(meta.get("name") or "").strip(),
        uid=str(meta.get("uid") or ""),
        generation=int(meta.get("generation") or 0),
        spc_name=str(spec.get("secretProviderClassName") or ""),
        service_account=str(spec.get("serviceAccountName") or ""),
        type=str(secret.get("type") or "Opaque"),
        data=_data(secret.get("data")),
        labels=labels,
        annotations=annotations,
        force=str(spec.get("forceSynchronization") or ""),
    )
