"""Mount request builders shaped exactly like the upstream driver's."""

from __future__ import annotations

import json
from typing import Any

import yaml

TOKENS_KEY = "csi.storage.k8s.io/serviceAccount.tokens"


def objects_yaml(*objects: dict[str, Any]) -> str:
    """The `objects` parameter as users write it: `array:` of YAML strings."""
    items = [yaml.safe_dump(o, default_flow_style=False, sort_keys=False) for o in objects]
    return yaml.safe_dump({"array": items}, default_flow_style=False, sort_keys=False)


def attributes(
    vault: str = "kv-test",
    objects: str | None = None,
    *,
    tenant: str = "tenant-1",
    pod: str = "pod-a",
    namespace: str = "default",
    tokens: dict[str, str] | None = None,
    **extra: str,
) -> dict[str, str]:
    attrib = {
        "keyvaultName": vault,
        "tenantId": tenant,
        "objects": objects
        if objects is not None
        else objects_yaml({"objectName": "s1", "objectType": "secret"}),
        "csi.storage.k8s.io/pod.name": pod,
        "csi.storage.k8s.io/pod.namespace": namespace,
        "csi.storage.k8s.io/pod.uid": "0b6e1a4e-1111-2222-3333-444455556666",
        "csi.storage.k8s.io/serviceAccount.name": "default",
        "csi.storage.k8s.io/ephemeral": "false",
        "secretProviderClass": "spc",
        "usePodIdentity": "false",
    }
    if tokens is not None:
        attrib[TOKENS_KEY] = json.dumps(
            {
                aud: {"token": tok, "expirationTimestamp": "2030-01-01T00:00:00Z"}
                for aud, tok in tokens.items()
            }
        )
    attrib.update(extra)
    return attrib


SP_SECRETS = {"clientid": "sp-client", "clientsecret": "sp-secret-value-123"}
