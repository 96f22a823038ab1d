"""The user's side of a SecretSync, as the tests, the real-node test and the bench create it: a
SecretProviderClass for one vault through workload identity, and a SecretSync naming it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from testbed.emulator import TENANT_ID


def spc_body(
    name: str, namespace: str, *, vault: str, client_id: str, objects: str, tenant: str = TENANT_ID
) -> dict[str, Any]:
    """`objects` as users write it (testbed.mount_attributes.objects_yaml)."""
    return {
        "apiVersion": "secrets-store.csi.x-k8s.io/v1",
        "kind": "SecretProviderClass",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "provider": "azure",
            "parameters": {
                "keyvaultName": vault,
                "tenantId": tenant,
                "clientID": client_id,
                "objects": objects,
            },
        },
    }


def secretsync_body(
    name: str,
    namespace: str,
    spc: str,
    data: Mapping[str, str],
    *,
    service_account: str,
    secret_type: str = "Opaque",
    secret_object: Mapping[str, Any] | None = None,
    **spec: Any,
) -> dict[str, Any]:
    """`data`: sourcePath → targetKey; `secret_object`: more of secretObject (labels, …);
    `spec`: more of the spec (forceSynchronization, …)."""
    return {
        "apiVersion": "secret-sync.x-k8s.io/v1alpha1",
        "kind": "SecretSync",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "secretProviderClassName": spc,
            "serviceAccountName": service_account,
            "secretObject": {
                "type": secret_type,
                "data": [{"sourcePath": s, "targetKey": t} for s, t in data.items()],
                **(secret_object or {}),
            },
            **spec,
        },
    }
