"""Parse a Mount request (attributes, secrets, permission) once into frozen, typed values.

Every error names the parameter (and the object, by index and name) and the rule broken, and
never echoes a secret value. Rules follow upstream v1.8.2 (pkg/provider, pkg/auth), tightened
where upstream silently did something harmful (docs/compatibility.md lists each case).
"""

from __future__ import annotations

import enum
import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

from . import clouds
from .caches import BoundedLRU
from .errors import Kind, ProviderError, invalid
from .jsonkeys import JsonKey, check_object, parse_json_keys
from .limits import (
    MAX_ATTRIBUTE_VALUE,
    MAX_ATTRIBUTES,
    MAX_OBJECTS,
    MAX_OBJECTS_TEXT,
    MAX_REQUEST_TEXT,
    MAX_VERSION_HISTORY,
    cut,
    shown,
)
from .paths import Layout, check_file_name
from .selection import Selection, is_selection, parse_selection
from .vaults import VAULT_NAME, check_vault_count, object_id, parse_object_vault


def _request_invalid(message: str, reason: str) -> ProviderError:
    return ProviderError(Kind.INVALID_ARGUMENT, message, request_error=True, reason=reason)


POD_NAME = "csi.storage.k8s.io/pod.name"
POD_NAMESPACE = "csi.storage.k8s.io/pod.namespace"
SERVICE_ACCOUNT_TOKENS = "csi.storage.k8s.io/serviceAccount.tokens"
WORKLOAD_IDENTITY_AUDIENCE = "api://AzureADTokenExchange"

_OBJECT_NAME = re.compile(r"^[-A-Za-z0-9]{1,127}$")
_OBJECT_VERSION = re.compile(r"^[A-Za-z0-9]*$")
_OCTAL = re.compile(r"^[+]?[0-7]+$")
_OBJECT_FIELDS = (
    "objectName",
    "objectAlias",
    "objectVersion",
    "objectVersionHistory",
    "objectType",
    "objectFormat",
    "objectEncoding",
    "filePermission",
    "keyvaultName",
    "objectNamePattern",
)
# Ours, and not scalars: parsed by jsonkeys.py and selection.py.
_STRUCTURED = ("jmesPath", "objectTags")


class ObjectType(enum.StrEnum):
    SECRET = "secret"
    KEY = "key"
    CERT = "cert"


class ObjectFormat(enum.StrEnum):
    DEFAULT = ""
    PEM = "pem"
    PFX = "pfx"


class ObjectEncoding(enum.StrEnum):
    DEFAULT = ""
    UTF8 = "utf-8"
    HEX = "hex"
    BASE64 = "base64"


class IdentityMode(enum.StrEnum):
    SERVICE_PRINCIPAL = "ServicePrincipal"
    WORKLOAD_IDENTITY = "WorkloadIdentity"
    MANAGED_IDENTITY = "VMManagedIdentity"


@dataclass(frozen=True)
class KeyVaultObject:
    index: int
    name: str
    type: ObjectType
    alias: str = ""
    version: str = ""
    version_history: int = 0
    format: ObjectFormat = ObjectFormat.DEFAULT
    encoding: ObjectEncoding = ObjectEncoding.DEFAULT
    file_permission: int | None = None
    # Ours (docs/compatibility.md): the object's own vault, empty for the SPC's (vaults.py).
    vault: str = ""
    # Ours: files cut from the JSON value (jsonkeys.py), beside the object's own file.
    json_keys: tuple[JsonKey, ...] = ()
    # Ours: a selection of objects (selection.py) instead of `name`, which is then empty.
    selection: Selection | None = None

    @property
    def file_name(self) -> str:
        return self.alias or self.name

    @property
    def uid(self) -> str:
        """The id the driver records in SecretProviderClassPodStatus: `<type>/<name>`."""
        return f"{self.type}/{self.name}"

    def version_id(self, default_vault: str) -> str:
        """`uid`, or `uid@vault` for an object in another vault than the SPC's (vaults.py)."""
        return object_id(self.uid, self.vault, default_vault)

    @property
    def single_version(self) -> bool:
        return self.version_history <= 1

    @property
    def requested_version(self) -> str:
        """The version to ask Key Vault for; `latest` means the current one (upstream sends it)."""
        return "" if self.version.lower() == "latest" else self.version

    def label(self) -> str:
        if self.selection is not None:
            return f"objects[{self.index}] (selection: {cut(self.selection.describe())})"
        return f"objects[{self.index}] ({self.name or '<no objectName>'})"


@dataclass(frozen=True)
class Identity:
    mode: IdentityMode
    tenant_id: str
    client_id: str = ""
    client_secret: str = field(default="", repr=False)
    assertion: str = field(default="", repr=False)
    user_assigned_identity_id: str = ""

    def cache_key(self, authority: str) -> tuple[str, ...]:
        """Key for credential reuse: never reuse a token beyond what its proof proves. For a
        client secret, its digest; for a workload identity, the digest of the exact service-account
        token. Not its claims: nobody here checks the token's signature, so a forged token with
        another pod's `iss`/`sub` must not ride on the Entra token a genuine one earned."""
        if self.mode is IdentityMode.SERVICE_PRINCIPAL:
            proof = hashlib.sha256(self.client_secret.encode()).hexdigest()
        elif self.mode is IdentityMode.WORKLOAD_IDENTITY:
            proof = "sha256:" + hashlib.sha256(self.assertion.encode()).hexdigest()
        else:
            proof = self.user_assigned_identity_id
        return (self.mode.value, authority, self.tenant_id, self.client_id, proof)


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
    use_vm_identity = _identity_switches(attrib)

    vault_name = attrib.get("keyvaultName", "").strip()
    if not vault_name:
        raise invalid("keyvaultName is not provided", "keyvaultName")
    tenant_id = attrib.get("tenantID", "").strip() or attrib.get("tenantId", "").strip()
    if not tenant_id:
        raise invalid("tenantId is not provided", "tenantId")

    cloud_name = attrib.get("cloudName", "").strip()
    env_file = attrib.get("cloudEnvFileName", "").strip()
    cloud = clouds.from_name(cloud_name, env_file) if cloud_name else default_cloud
    identity = _parse_identity(attrib, secret_map, tenant_id, use_vm_identity)
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


def _identity_switches(attrib: Mapping[str, str]) -> bool:
    """Whether managed identity is chosen; the retired and unsupported modes are refused."""
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
    if use_token_proxy:
        raise ProviderError(
            Kind.UNIMPLEMENTED,
            "useAzureTokenProxy (AKS identity binding) is not supported by this provider",
            reason="useAzureTokenProxy",
        )
    return use_vm_identity


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


def _parse_identity(
    attrib: Mapping[str, str], secrets: Mapping[str, str], tenant_id: str, use_vm: bool
) -> Identity:
    if use_vm:
        return Identity(
            IdentityMode.MANAGED_IDENTITY,
            tenant_id,
            user_assigned_identity_id=attrib.get("userAssignedIdentityID", "").strip(),
        )
    client_id = attrib.get("clientID", "").strip()
    if client_id:
        tokens = (
            secrets.get(SERVICE_ACCOUNT_TOKENS) or attrib.get(SERVICE_ACCOUNT_TOKENS, "")
        ).strip()
        assertion = parse_service_account_token(tokens, WORKLOAD_IDENTITY_AUDIENCE)
        return Identity(
            IdentityMode.WORKLOAD_IDENTITY, tenant_id, client_id=client_id, assertion=assertion
        )
    return _service_principal(secrets, tenant_id)


def _service_principal(secrets: Mapping[str, str], tenant_id: str) -> Identity:
    if not secrets:
        raise invalid(
            "failed to get credentials, nodePublishSecretRef secret is not set: set clientID "
            "(workload identity), useVMManagedIdentity, or a nodePublishSecretRef with "
            "clientid and clientsecret",
            "credentials",
        )
    sp_id = sp_secret = ""
    for key, value in secrets.items():
        if key.lower() == "clientid":
            sp_id = value
        elif key.lower() == "clientsecret":
            sp_secret = value
    if not sp_id:
        raise invalid("could not find clientid in secrets (nodePublishSecretRef)", "clientid")
    if not sp_secret:
        raise invalid(
            "could not find clientsecret in secrets (nodePublishSecretRef)", "clientsecret"
        )
    return Identity(
        IdentityMode.SERVICE_PRINCIPAL, tenant_id, client_id=sp_id, client_secret=sp_secret
    )


def parse_service_account_token(tokens: str, audience: str) -> str:
    """The token for `audience` from kubelet's `{"<aud>": {"token": ..., ...}}` JSON."""
    reason = SERVICE_ACCOUNT_TOKENS
    if not tokens:
        raise invalid(
            "failed to parse workload identity tokens: service account tokens not found "
            f"(attribute {SERVICE_ACCOUNT_TOKENS}; is tokenRequests set on the CSIDriver?)",
            reason,
        )
    try:
        parsed: Any = json.loads(tokens)
    except (ValueError, RecursionError):
        raise invalid(
            f"failed to parse workload identity tokens: {SERVICE_ACCOUNT_TOKENS} is not valid "
            "JSON (or is nested too deeply)",
            reason,
        ) from None
    entry = parsed.get(audience) if isinstance(parsed, dict) else None
    token = entry.get("token") if isinstance(entry, dict) else None
    if not isinstance(token, str) or not token:
        raise invalid(
            f"failed to parse workload identity tokens: token for audience {audience} not found "
            f"(add audience {audience} to the CSIDriver tokenRequests)",
            reason,
        )
    return token


# libyaml when present: the pure-Python loader costs ~0.3 ms per object.
_LOADER: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

# Every mount of one SecretProviderClass sends the same text and the result is immutable, so
# parse each text once; bounded by entries and by the bytes of the texts it keeps.
PARSED_OBJECTS: BoundedLRU[str, tuple[KeyVaultObject, ...]] = BoundedLRU(
    "objects", max_entries=256, max_bytes=16 * 1024 * 1024, weigh=lambda text, _: len(text)
)


def parse_objects(text: str) -> tuple[KeyVaultObject, ...]:
    """The `objects` parameter: YAML with `array:` of YAML strings, one object each."""
    cached = PARSED_OBJECTS.get(text)
    if cached is None:
        cached = _parse_objects(text)
        PARSED_OBJECTS.put(text, cached)
    return cached


def _parse_objects(text: str) -> tuple[KeyVaultObject, ...]:
    if not text:
        raise invalid("objects is not set", "objects")
    if len(text) > MAX_OBJECTS_TEXT:
        raise invalid(f"objects: {len(text)} characters, at most {MAX_OBJECTS_TEXT}", "objects")
    items = _object_texts(text)
    objects = tuple(_parse_object(i, item) for i, item in enumerate(items))
    check_vault_count("objects", (obj.vault for obj in objects))
    layout = Layout()
    for obj in objects:
        if obj.selection is not None:
            continue  # its files are known once listed (fetch.py)
        if obj.single_version:
            layout.claim_file(obj.file_name, obj)
        else:
            layout.claim_dir(obj.file_name, obj)
        for key in obj.json_keys:
            layout.claim_file(key.alias, obj)
    return objects


def _object_texts(text: str) -> list[str]:
    try:
        root = yaml.compose(text, Loader=_LOADER)
    except (yaml.YAMLError, RecursionError) as exc:
        raise invalid(
            f"failed to yaml unmarshal objects: {_yaml_problem(exc)}", "objects"
        ) from None
    if not isinstance(root, yaml.MappingNode):
        raise invalid(
            "failed to yaml unmarshal objects: expected a mapping with key `array`", "objects"
        )
    items: list[str] | None = None
    for key, value in root.value:
        if isinstance(key, yaml.ScalarNode) and key.value == "array":
            if isinstance(value, yaml.ScalarNode) and value.tag.endswith(":null"):
                items = []
                continue
            if not isinstance(value, yaml.SequenceNode) or not all(
                isinstance(v, yaml.ScalarNode) for v in value.value
            ):
                raise invalid(
                    "objects: `array` must be a list of YAML strings, one per object", "objects"
                )
            items = [v.value for v in value.value]
    if items is None:
        raise invalid(
            "objects: missing key `array` (a list of YAML strings, one per object)", "objects"
        )
    if not items:
        raise invalid("objects: `array` is empty, list at least one object", "objects")
    if len(items) > MAX_OBJECTS:
        raise invalid(f"objects: {len(items)} objects, at most {MAX_OBJECTS}", "objects")
    return items


def _yaml_problem(exc: BaseException) -> str:
    if isinstance(exc, RecursionError):
        return "nested too deeply"
    if isinstance(exc, yaml.MarkedYAMLError) and exc.problem_mark is not None:
        mark = exc.problem_mark
        return f"{shown(str(exc.problem))} at line {mark.line + 1}, column {mark.column + 1}"
    return "not valid YAML"


def _object_fields(
    where: str, text: str, nodes: dict[str, yaml.Node] | None = None
) -> dict[str, str]:
    """One object's YAML as its known fields (unknown keys ignored, as upstream does); the
    structured ones (ours) go to `nodes`."""
    try:
        node = yaml.compose(text, Loader=_LOADER)
    except (yaml.YAMLError, RecursionError) as exc:
        raise invalid(
            f"{where}: unmarshal failed, not valid YAML: {_yaml_problem(exc)}", "objects"
        ) from None
    raw: dict[str, str] = {}
    if node is None or (isinstance(node, yaml.ScalarNode) and node.value == ""):
        return raw
    if not isinstance(node, yaml.MappingNode):
        raise invalid(f"{where}: unmarshal failed, expected a mapping of object fields", "objects")
    for key, value in node.value:
        if nodes is not None and isinstance(key, yaml.ScalarNode) and key.value in _STRUCTURED:
            nodes[key.value] = value
            continue
        if not isinstance(key, yaml.ScalarNode) or key.value not in _OBJECT_FIELDS:
            continue
        if not isinstance(value, yaml.ScalarNode):
            raise invalid(f"{where}: {key.value} must be a scalar", key.value)
        raw[key.value] = "" if value.tag.endswith(":null") else value.value.strip()
    return raw


def _parse_object(index: int, text: str) -> KeyVaultObject:
    nodes: dict[str, yaml.Node] = {}
    raw = _object_fields(f"objects[{index}]", text, nodes)
    if is_selection(raw, nodes):
        return _parse_selection(index, raw, nodes)
    name = raw.get("objectName", "")
    where = f"objects[{index}] ({cut(name) if name else '<no objectName>'})"
    if not name:
        raise invalid(f"{where}: objectName is required", "objectName")
    if not _OBJECT_NAME.match(name):
        raise invalid(f"{where}: objectName must be 1-127 characters of [0-9a-zA-Z-]", "objectName")
    object_type = _object_type(where, raw)
    version = raw.get("objectVersion", "")
    if not _OBJECT_VERSION.match(version) or len(version) > 64:
        raise invalid(
            f"{where}: objectVersion must be a Key Vault version id (letters and digits)",
            "objectVersion",
        )
    alias = raw.get("objectAlias", "")
    check_file_name(where, alias or name)
    obj = KeyVaultObject(
        index=index,
        name=name,
        type=object_type,
        alias=alias,
        version=version,
        version_history=_version_history(where, raw),
        format=_object_format(where, raw, object_type),
        encoding=_object_encoding(where, raw, object_type),
        file_permission=_file_permission(where, raw),
        vault=parse_object_vault(where, raw.get("keyvaultName", "")),
        json_keys=parse_json_keys(where, nodes.get("jmesPath"), alias or name),
    )
    if obj.json_keys:
        check_object(where, obj.type, obj.encoding, obj.format, obj.version_history)
    return obj


def _parse_selection(
    index: int, raw: Mapping[str, str], nodes: Mapping[str, yaml.Node]
) -> KeyVaultObject:
    where = f"objects[{index}] (selection)"
    selection = parse_selection(where, raw, nodes)
    object_type = _object_type(where, raw)
    return KeyVaultObject(
        index=index,
        name="",
        type=object_type,
        format=_object_format(where, raw, object_type),
        encoding=_object_encoding(where, raw, object_type),
        file_permission=_file_permission(where, raw),
        vault=parse_object_vault(where, raw.get("keyvaultName", "")),
        selection=selection,
    )


def _object_type(where: str, raw: Mapping[str, str]) -> ObjectType:
    type_text = raw.get("objectType", "")
    try:
        return ObjectType(type_text)
    except ValueError:
        raise invalid(
            f"{where}: invalid objectType {shown(type_text)}, should be secret, key, or cert",
            "objectType",
        ) from None


def _version_history(where: str, raw: Mapping[str, str]) -> int:
    history_text = raw.get("objectVersionHistory", "")
    if not history_text:
        return 0
    if not re.fullmatch(r"[+-]?[0-9]{1,20}", history_text):
        raise invalid(f"{where}: objectVersionHistory must be an integer", "objectVersionHistory")
    history = int(history_text, 10)
    if history < 0:
        raise invalid(f"{where}: objectVersionHistory must not be negative", "objectVersionHistory")
    if history > MAX_VERSION_HISTORY:
        raise invalid(
            f"{where}: objectVersionHistory is too large (at most {MAX_VERSION_HISTORY})",
            "objectVersionHistory",
        )
    return history


def _object_format(where: str, raw: Mapping[str, str], object_type: ObjectType) -> ObjectFormat:
    format_text = raw.get("objectFormat", "").lower()
    try:
        object_format = ObjectFormat(format_text)
    except ValueError:
        raise invalid(
            f"{where}: invalid objectFormat {shown(raw['objectFormat'])}, should be PEM or PFX",
            "objectFormat",
        ) from None
    if object_format is ObjectFormat.PFX and object_type is not ObjectType.SECRET:
        raise invalid(f"{where}: PFX format only supported for objectType: secret", "objectFormat")
    return object_format


def _object_encoding(where: str, raw: Mapping[str, str], object_type: ObjectType) -> ObjectEncoding:
    encoding_text = raw.get("objectEncoding", "").lower()
    if encoding_text and object_type is not ObjectType.SECRET:
        raise invalid(
            f"{where}: objectEncoding only supported for objectType: secret", "objectEncoding"
        )
    try:
        return ObjectEncoding(encoding_text)
    except ValueError:
        raise invalid(
            f"{where}: invalid objectEncoding {shown(raw['objectEncoding'])}, "
            "should be hex, base64 or utf-8",
            "objectEncoding",
        ) from None


def _file_permission(where: str, raw: Mapping[str, str]) -> int | None:
    permission_text = raw.get("filePermission", "")
    if not permission_text:
        return None
    if (
        len(permission_text) > 8
        or not _OCTAL.match(permission_text)
        or int(permission_text, 8) > 0o7777
    ):
        raise invalid(
            f"{where}: filePermission {shown(permission_text)} must be an octal file mode "
            "such as 0644 (digits 0-7, at most 07777)",
            "filePermission",
        )
    return int(permission_text, 8)
