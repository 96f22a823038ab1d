"""Which mounts may share one provider call: the share key, and why sharing is safe.

Mounts with equal keys send Mount requests that are byte-identical but for the pod's name and
UID and its service-account token: the same SecretProviderClass (name and parameters), the same
namespace, provider, volume attributes, service account and nodePublishSecretRef data. Their
authorization is the same by construction: Key Vault sees the same federated subject
`system:serviceaccount:<ns>:<sa>` (workload identity: the pod-bound tokens differ, the subject
they prove does not), or the same client secret, or the node's managed identity. So the
answer one of them gets is the answer each would get. Pod identity (aad-pod-identity,
`usePodIdentity`) authorizes each pod on its own, and a mount whose service account is not
known (no `csi.storage.k8s.io/serviceAccount.name` from kubelet) cannot be told apart: neither
shares. Rotation ticks, kubelet republishes and first publishes use this one key.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

from .volumes import POD_SPECIFIC, SA_TOKENS

ShareKey = tuple[Any, ...]


def share_key(
    *,
    namespace: str,
    spc_name: str,
    provider: str,
    parameters: Mapping[str, str],
    volume_context: Mapping[str, str],
    secrets: Mapping[str, str],
    service_account: str,
) -> ShareKey | None:
    """Equal keys: one provider call may serve them all; None: this mount calls alone."""
    if (dict(parameters) | dict(volume_context)).get("usePodIdentity", "").lower() == "true":
        return None
    if not service_account:
        return None
    attrs = tuple(sorted((k, v) for k, v in volume_context.items() if k not in POD_SPECIFIC))
    credentials = {k: v for k, v in secrets.items() if k != SA_TOKENS}  # tokens are per pod
    return (
        namespace,
        spc_name,
        provider,
        service_account,
        _digest(parameters),
        _digest(credentials),
        attrs,
    )


def _digest(values: Mapping[str, str]) -> str:
    """Keys outlive a call: hold a digest, never the secret data itself."""
    h = hashlib.sha256()
    for k, v in sorted(values.items()):
        h.update(k.encode() + b"\0" + v.encode() + b"\0")
    return h.hexdigest()
