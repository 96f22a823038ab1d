"""Parse a Mount request (attributes, secrets, permission) once into frozen, typed values
(the identity in identity.py, the objects in objects.py).

Every error names the parameter (and the object, by index and name) and the rule broken, and
never echoes a secret value. Rules follow upstream v1.8.2 (pkg/provider, pkg/auth), tightened
where upstream silently did something harmful (docs/compatibility.md lists each case).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass

from . import clouds
from .errors import Kind, ProviderError, invalid
from .identity import Identity, parse_identity
from .limits import MAX_ATTRIBUTE_VALUE, MAX_ATTRIBUTES, MAX_OBJECTS_TEXT, MAX_REQUEST_TEXT, shown
from .objects import KeyVaultObject, parse_objects
from .vaults import VAULT_NAME, check_vault_count


def _request_invalid(message: str, reason: str) -> ProviderError:
    return ProviderError(Kind.INVALID_ARGUMENT, message, request_error=True, reason=reason)


POD_NAME = "csi.storage.k8s.io/pod.name"
POD_NAMESPACE = "csi.storage.k8s.io/pod.namespace"


@dataclass(frozen=True)
class MountParameters:
    pod_name: str
    pod_namespace: str
    vault_name: str
    cloud: clouds.CloudEnvironment
    identity: Identity
    objects: tuple[KeyVaultObject, ...]
    default_mode: int

    @property
    def vault_url(self) -> str:
        return self.url_of(self.vault_name)

    def url_of(self, vault_name: str) -> str:
        return f"https://{vault_name}.{self.cloud.key_vault_dns_suffix}/"

    def other_vaults(self) -> list[str]:
        """The objects' own vaults other than the SPC's, each once (as first written)."""
        seen = {self.vault_name.lower()}
        out = []
        for obj in self.objects:
            if obj.vault and obj.vault.lower() not in seen:
                seen.add(obj.vault.lower())
                out.append(obj.vault)
        return out


def parse_mount(
    attributes: str,
    secrets: str,
    permission: str,
    default_cloud: clouds.CloudEnvironment = clouds.PUBLIC,
) -> MountParameters:
    """Everything a mount needs, checked in upstream's order."""
    attrib = _json_string_map(attributes, "attributes", allow_null=False)
    _check_attribute_sizes(attrib)
    secret_map = _json_string_map(secrets, "secrets", allow_null=True)
    default_mode = _parse_permission(permission)
    pod_name, pod_namespace = _pod(attrib)
    use_vm_identity, use_token_proxy = _identity_switches(attrib)

    vault_name = attrib.get("keyvaultName", "").strip()
    if not vault_name:
        raise invalid("keyvaultName is not provided", "keyvaultName")
    tenant_id = attrib.get("tenantID", "").strip() or attrib.get("tenantId", "").strip()
    if not tenant_id:
        raise invalid("tenantId is not provided", "tenantId")

    cloud_name = attrib.get("cloudName", "").strip()
    env_file = attrib.get("cloudEnvFileName", "").strip()
    cloud = clouds.from_name(cloud_name, env_file) if cloud_name else default_cloud
    identity = parse_identity(attrib, secret_map, tenant_id, use_vm_identity, use_token_proxy)
    objects = parse_objects(attrib.get("objects", "").strip())
    _check_vault_name(vault_name)
    check_vault_count("objects", [vault_name, *(obj.vault for obj in objects)])
    return MountParameters(
        pod_name=pod_name,
        pod_namespace=pod_namespace,
        vault_name=vault_name,
        cloud=cloud,
        identity=identity,
        objects=objects,
        default_mode=default_mode,
    )


def _pod(attrib: Mapping[str, str]) -> tuple[str, str]:
    pod_name = attrib.get(POD_NAME, "").strip()
    pod_namespace = attrib.get(POD_NAMESPACE, "").strip()
    if not pod_name:
        raise invalid(f"pod name is not provided: attribute {POD_NAME} is required", POD_NAME)
    if not pod_namespace:
        raise invalid(
            f"pod namespace is not provided: attribute {POD_NAMESPACE} is required", POD_NAMESPACE
        )
    return pod_name, pod_namespace


def _identity_switches(attrib: Mapping[str, str]) -> tuple[bool, bool]:
    """(managed identity, identity binding): at most one; the retired pod identity refused."""
    use_pod_identity = _parse_bool(attrib, "usePodIdentity")
    use_vm_identity = _parse_bool(attrib, "useVMManagedIdentity")
    use_token_proxy = _parse_bool(attrib, "useAzureTokenProxy")
    if sum((use_pod_identity, use_vm_identity, use_token_proxy)) > 1:
        raise invalid(
            "only one identity mode can be enabled at a time: usePodIdentity, "
            "useVMManagedIdentity, or useAzureTokenProxy",
            "identity mode",
        )
    if use_pod_identity:
        raise invalid(
            "usePodIdentity is deprecated and not supported: aad-pod-identity is retired; "
            "use workload identity (clientID) or useVMManagedIdentity",
            "usePodIdentity",
        )
    return use_vm_identity, use_token_proxy


def _check_vault_name(vault_name: str) -> None:
    if len(vault_name) < 3 or len(vault_name) > 24:
        raise invalid(
            f"keyvaultName: invalid vault name {shown(vault_name)}, must be between 3 and 24 chars",
            "keyvaultName",
        )
    if not VAULT_NAME.match(vault_name):
        raise invalid(
            f"keyvaultName: invalid vault name {shown(vault_name)}, must match [-a-zA-Z0-9]",
            "keyvaultName",
        )


def _json_string_map(text: str, what: str, *, allow_null: bool) -> dict[str, str]:
    if len(text) > MAX_REQUEST_TEXT:
        raise _request_invalid(
            f"failed to unmarshal {what}: {len(text)} characters, at most {MAX_REQUEST_TEXT}",
            what,
        )
    if text.strip() == "":
        raise _request_invalid(f"failed to unmarshal {what}: empty, expected a JSON object", what)
    try:
        value = json.loads(text)
    except RecursionError:
        raise _request_invalid(
            f"failed to unmarshal {what}: nested too deeply, expected a flat JSON object of "
            "strings",
            what,
        ) from None
    except ValueError as exc:
        # The position only: the text may hold secrets.
        raise _request_invalid(
            f"failed to unmarshal {what}: not valid JSON ({getattr(exc, 'msg', 'syntax error')} "
            f"at char {getattr(exc, 'pos', '?')})",
            what,
        ) from None
    if value is None and allow_null:
        return {}
    if not isinstance(value, dict):
        raise _request_invalid(
            f"failed to unmarshal {what}: expected a JSON object of strings", what
        )
    bad = next((k for k, v in value.items() if not isinstance(v, str)), None)
    if bad is not None:
        raise _request_invalid(
            f"failed to unmarshal {what}: value of {shown(bad)} must be a string", what
        )
    return value


def _check_attribute_sizes(attrib: Mapping[str, str]) -> None:
    """Counts and sizes, before any value is parsed (`objects` has a limit of its own)."""
    if len(attrib) > MAX_ATTRIBUTES:
        raise _request_invalid(
            f"attributes: {len(attrib)} entries, at most {MAX_ATTRIBUTES}", "attributes"
        )
    for key, value in attrib.items():
        limit = MAX_OBJECTS_TEXT if key == "objects" else MAX_ATTRIBUTE_VALUE
        if len(value) > limit:
            raise invalid(
                f"attribute {shown(key)}: {len(value)} characters, at most {limit}",
                "objects" if key == "objects" else "attribute size",
            )


def _parse_permission(text: str) -> int:
    try:
        value = json.loads(text) if len(text) <= 16 else None
    except ValueError:
        value = None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 0o7777:
        raise _request_invalid(
            f"failed to unmarshal file permission: {shown(text)} must be a JSON number "
            "such as 420 (0644)",
            "permission",
        )
    return value


_TRUE = {"1", "t", "T", "TRUE", "true", "True"}
_FALSE = {"0", "f", "F", "FALSE", "false", "False"}


def _parse_bool(attrib: Mapping[str, str], name: str) -> bool:
    text = attrib.get(name, "").strip()
    if text == "" or text in _FALSE:
        return False
    if text in _TRUE:
        return True
    raise invalid(
        f"failed to parse {name} flag: {shown(text)} is not a boolean (true or false)", name
    )
