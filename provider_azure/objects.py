"""The `objects` parameter: YAML with `array:` of YAML strings, one Key Vault object each.

Each object becomes a frozen KeyVaultObject; every error names the object by index and name
and the rule broken. Texts are parsed once (a bounded cache): every pod of one
SecretProviderClass sends the same text.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import yaml

from .caches import BoundedLRU
from .errors import invalid
from .jsonkeys import JsonKey, check_object, parse_json_keys
from .limits import MAX_OBJECTS, MAX_OBJECTS_TEXT, MAX_VERSION_HISTORY, cut, shown
from .paths import Layout, check_file_name
from .selection import Selection, is_selection, parse_selection
from .vaults import check_vault_count, object_id, parse_object_vault

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
