"""SecretProviderClassPodStatus: one per (pod, SPC) mount, the record rotation and sync read."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from lightkube import ApiError, AsyncClient

from .errors import KubeError
from .kube import NODE_LABEL, SecretProviderClassPodStatus, api_error_text, to_dict


@dataclass(frozen=True)
class PodStatusRecord:
    pod_name: str
    namespace: str
    pod_uid: str
    spc_name: str
    target_path: str
    node_id: str
    mounted: bool
    objects: Mapping[str, str]

    @property
    def name(self) -> str:
        return f"{self.pod_name}-{self.namespace}-{self.spc_name}"

    def body(self) -> dict[str, Any]:
        return {
            "apiVersion": "secrets-store.csi.x-k8s.io/v1",
            "kind": "SecretProviderClassPodStatus",
            "metadata": {
                "name": self.name,
                "namespace": self.namespace,
                "labels": {NODE_LABEL: self.node_id},
                "ownerReferences": [
                    {"apiVersion": "v1", "kind": "Pod", "name": self.pod_name, "uid": self.pod_uid}
                ],
            },
            "status": {
                "podName": self.pod_name,
                "targetPath": self.target_path,
                "mounted": self.mounted,
                "secretProviderClassName": self.spc_name,
                "objects": [{"id": k, "version": v} for k, v in sorted(self.objects.items())],
            },
        }


async def create_or_update(client: AsyncClient | None, record: PodStatusRecord) -> None:
    """Create; if it exists (a StatefulSet pod moved nodes, or a republish), take it over."""
    if client is None:
        raise KubeError("no Kubernetes API configured (in-cluster config or --kubeconfig)")
    body = record.body()
    try:
        await client.create(SecretProviderClassPodStatus.from_dict(body))
        return
    except ApiError as e:
        if e.status.code != 409:
            raise KubeError(api_error_text(e)) from None
    except Exception as e:
        raise KubeError(api_error_text(e)) from None
    try:
        existing = await client.get(
            SecretProviderClassPodStatus, record.name, namespace=record.namespace
        )
        data = to_dict(existing)
        meta = data.setdefault("metadata", {})
        labels = meta.get("labels") or {}
        labels[NODE_LABEL] = record.node_id
        meta["labels"] = labels
        meta["ownerReferences"] = body["metadata"]["ownerReferences"]
        data["status"] = body["status"]
        await client.replace(SecretProviderClassPodStatus.from_dict(data))
    except Exception as e:
        raise KubeError(api_error_text(e)) from None


class StatusWriter(Protocol):
    """Where a mount's record goes after a publish or a rotation; raises KubeError."""

    async def write(self, record: PodStatusRecord) -> None: ...


class ApiStatus:
    """The SPCPS object on the API server."""

    def __init__(self, client: AsyncClient | None) -> None:
        self.client = client

    async def write(self, record: PodStatusRecord) -> None:
        await create_or_update(self.client, record)


class NoStatus:
    """Without an API server (standalone mode): the record lives in the mount table only."""

    async def write(self, record: PodStatusRecord) -> None:
        return None


async def list_for_node(client: AsyncClient, node_id: str) -> list[PodStatusRecord]:
    """This node's SPCPS objects (restart recovery)."""
    records = []
    async for obj in client.list(
        SecretProviderClassPodStatus, namespace="*", labels={NODE_LABEL: node_id}
    ):
        data = to_dict(obj)
        meta = data.get("metadata", {})
        status = data.get("status") or {}
        owners = meta.get("ownerReferences") or [{}]
        records.append(
            PodStatusRecord(
                pod_name=status.get("podName", ""),
                namespace=meta.get("namespace", ""),
                pod_uid=str(owners[0].get("uid", "")),
                spc_name=status.get("secretProviderClassName", ""),
                target_path=status.get("targetPath", ""),
                node_id=node_id,
                mounted=bool(status.get("mounted")),
                objects={
                    o.get("id", ""): o.get("version", "") for o in status.get("objects") or []
                },
            )
        )
    return records
