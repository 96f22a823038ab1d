"""The pod and volume vocabulary kubelet speaks, written once for publish, rotation and sync.

Pod-info keys of the volume context, the one parser of kubelet's target paths, the pod's CSI
volume for a mount, "pod finished", and the provider's Mount request (attributes and secrets
as Go's json.Marshal writes them).
"""

from __future__ import annotations

import json
import posixpath
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from lightkube.models.core_v1 import Volume
from lightkube.resources.core_v1 import Pod

from .errors import InvalidRequest

POD_NAME = "csi.storage.k8s.io/pod.name"
POD_NAMESPACE = "csi.storage.k8s.io/pod.namespace"
POD_UID = "csi.storage.k8s.io/pod.uid"
POD_SA_NAME = "csi.storage.k8s.io/serviceAccount.name"
SA_TOKENS = "csi.storage.k8s.io/serviceAccount.tokens"
EPHEMERAL = "csi.storage.k8s.io/ephemeral"
SPC_FIELD = "secretProviderClass"
FILE_PERMISSION = 0o644
# Volume-context keys that differ between pods sharing everything else (rotation sharing).
POD_SPECIFIC = (POD_NAME, POD_NAMESPACE, POD_UID, SA_TOKENS, EPHEMERAL)


@dataclass(frozen=True)
class PublishRequest:
    """NodePublishVolume's arguments, as plain Python."""

    volume_id: str
    target_path: str
    has_capability: bool
    readonly: bool
    volume_context: Mapping[str, str]
    secrets: Mapping[str, str] = field(repr=False)
    # volume_capability.mount.volume_mount_group: the pod's fsGroup (CSIDriver fsGroupPolicy
    # File + our VOLUME_MOUNT_GROUP capability); "" without one. Parsed by mount_group().
    volume_mount_group: str = ""


@dataclass(frozen=True)
class TargetPath:
    """What a target path says: `…/pods/<uid>/volumes/kubernetes.io~csi/<volume>/mount`."""

    pod_uid: str  # "" unless the path has kubelet's full shape
    volume: str  # "" unless the path ends in `<volume>/mount`

    @property
    def kubelet_shaped(self) -> bool:
        return bool(self.pod_uid and self.volume)


def parse_target(target: str) -> TargetPath:
    """The one parser of target paths (lexically normalised, no filesystem access)."""
    parts = posixpath.normpath(target).split("/")
    if len(parts) < 2 or parts[-1] != "mount" or not parts[-2]:
        return TargetPath("", "")
    volume = parts[-2]
    shaped = (
        len(parts) >= 7
        and parts[-6] == "pods"
        and parts[-4:-2]
        == [
            "volumes",
            "kubernetes.io~csi",
        ]
    )
    return TargetPath(parts[-5] if shaped and parts[-5] else "", volume)


def pod_context(name: str, namespace: str, uid: str, service_account: str) -> dict[str, str]:
    """The pod facts kubelet adds to an inline volume's context (podInfoOnMount)."""
    return {
        POD_NAME: name,
        POD_NAMESPACE: namespace,
        POD_UID: uid,
        POD_SA_NAME: service_account,
        EPHEMERAL: "true",
    }


def csi_volume(pod: Pod, spc_name: str, volume_name: str, driver: str) -> Volume | None:
    """The pod's CSI volume of this driver using `spc_name`, named `volume_name`; with no name
    to go by (a target path not in kubelet's shape), the first such volume."""
    if pod.spec is None:
        return None
    candidates = [
        v
        for v in pod.spec.volumes or []
        if v.csi is not None
        and v.csi.driver == driver
        and (v.csi.volumeAttributes or {}).get(SPC_FIELD) == spc_name
    ]
    for v in candidates:
        if v.name == volume_name:
            return v
    return candidates[0] if candidates and not volume_name else None


def pod_finished(pod: Pod) -> bool:
    """Terminating, or done for good (Succeeded/Failed): nothing to refresh or sync for it."""
    if pod.metadata is not None and pod.metadata.deletionTimestamp is not None:
        return True
    return pod.status is not None and pod.status.phase in ("Succeeded", "Failed")


def go_json(value: Any) -> str:
    """json.Marshal's output: sorted keys, no spaces, HTML-safe escapes, `null` for no map."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    for char, escape in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026")):
        text = text.replace(char, escape)
    return text.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")


def build_mount_request(
    spc_parameters: Mapping[str, str],
    volume_context: Mapping[str, str],
    secrets: Mapping[str, str],
) -> tuple[str, str]:
    """The provider's attributes and secrets JSON; publish and rotation both build them here.

    Tokens in both places: kubelet's publish secrets win over the volume context (upstream)."""
    parameters = dict(spc_parameters)
    parameters.update(volume_context)
    tokens = secrets.get(SA_TOKENS) or volume_context.get(SA_TOKENS, "")
    if tokens:
        parameters[SA_TOKENS] = tokens
    return go_json(parameters), go_json(dict(secrets) if secrets else None)


MOUNT_GROUP_FIELD = "volume_capability.mount.volume_mount_group"
MAX_GID = 2**31 - 1  # Kubernetes' bound on fsGroup (and below (gid_t)-1, "no change")
_GID = re.compile(r"^(0|[1-9][0-9]{0,9})$")


def mount_group(text: str) -> int | None:
    """The pod's fsGroup as a gid (None: no fsGroup); InvalidRequest naming the field."""
    if text == "":
        return None
    if _GID.match(text) is None or int(text) > MAX_GID:
        shown = text if len(text) <= 32 else text[:32] + "…"
        raise InvalidRequest(
            f"{MOUNT_GROUP_FIELD} {shown!r}: not a decimal group id from 0 to {MAX_GID}"
        )
    return int(text)
