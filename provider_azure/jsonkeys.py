"""JSON keys (`jmesPath`, the AWS provider's shape): values of a JSON secret as files of their own.

An object with `jmesPath: [{path: ..., objectAlias: ...}]` is parsed as JSON when fetched, and
each path's value, which must be a string, is written as the file `objectAlias`; the object's
own file is written too, as the AWS provider does. Paths are JMESPath (the `jmespath` package)
restricted to names, quoted names, dots and `[index]`: every path then costs at most its own
length to evaluate, whatever the document, and a value is one string. Functions, projections,
filters, pipes and multi-selects are refused where the parameter is parsed: they can make
results larger than the document (`[@,@] | [@,@] | ...` doubles it per step).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import yaml

from .errors import ProviderError, invalid
from .limits import MAX_JSON_DEPTH, MAX_JSON_KEYS, MAX_JSON_PATH, MAX_JSON_TEXT, shown
from .paths import Layout, check_file_name

REASON = "jmesPath"
# AST nodes of a path of names and indexes (jmespath's parser names).
_ALLOWED = frozenset({"field", "subexpression", "index_expression", "index"})


@dataclass(frozen=True)
class JsonKey:
    path: str
    alias: str
    expression: Any = field(compare=False, repr=False)


@dataclass(frozen=True)
class _Owner:
    """A file of one object, for the layout check among that object's own files."""

    index: int
    where: str

    def label(self) -> str:
        return self.where


def parse_json_keys(where: str, node: yaml.Node | None, own_file: str) -> tuple[JsonKey, ...]:
    """The `jmesPath` list of one object: each entry a mapping with `path` and `objectAlias`,
    each alias a file of its own (not the object's `own_file`, nor another entry's)."""
    if node is None:
        return ()
    if not isinstance(node, yaml.SequenceNode) or not node.value:
        raise invalid(
            f"{where}: jmesPath must be a non-empty list of {{path, objectAlias}} entries", REASON
        )
    if len(node.value) > MAX_JSON_KEYS:
        raise invalid(
            f"{where}: jmesPath has {len(node.value)} entries, at most {MAX_JSON_KEYS}", REASON
        )
    parsed = tuple(_entry(f"{where}: jmesPath[{i}]", item) for i, item in enumerate(node.value))
    layout = Layout()
    layout.claim_file(own_file, _Owner(0, f"{where}'s own file"))
    for i, key in enumerate(parsed):
        layout.claim_file(key.alias, _Owner(i + 1, f"{where} jmesPath[{i}]"))
    return parsed


def _entry(where: str, node: yaml.Node) -> JsonKey:
    fields: dict[str, str] = {}
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            if isinstance(key, yaml.ScalarNode) and key.value in ("path", "objectAlias"):
                if not isinstance(value, yaml.ScalarNode):
                    raise invalid(f"{where}: {key.value} must be a string", REASON)
                fields[key.value] = value.value.strip()
    path, alias = fields.get("path", ""), fields.get("objectAlias", "")
    if not path or not alias:
        raise invalid(f"{where}: needs both path and objectAlias (non-empty strings)", REASON)
    if len(path) > MAX_JSON_PATH:
        raise invalid(
            f"{where}: path {shown(path)} is longer than {MAX_JSON_PATH} characters", REASON
        )
    check_file_name(where, alias)
    return JsonKey(path, alias, _compile(where, path))


def _compile(where: str, path: str) -> Any:
    # Imported by the first mount that uses jmesPath (~2 ms of CPU the others need not pay).
    import jmespath
    from jmespath.exceptions import JMESPathError

    try:
        expression = jmespath.compile(path)
    except (JMESPathError, RecursionError):
        raise invalid(
            f"{where}: path {shown(path)} is not a valid JMESPath expression", REASON
        ) from None
    stack = [expression.parsed]
    while stack:
        ast = stack.pop()
        if ast["type"] not in _ALLOWED:
            raise invalid(
                f"{where}: path {shown(path)}: only names, quoted names, dots and [index] are "
                f"supported (found {ast['type']})",
                REASON,
            )
        stack.extend(ast["children"])
    return expression


def check_object(
    where: str, object_type: str, encoding: str, object_format: str, history: int
) -> None:
    """What a JSON object must be: a secret, read as text, one version."""
    if object_type != "secret":
        raise invalid(f"{where}: jmesPath is only supported for objectType: secret", REASON)
    if encoding not in ("", "utf-8"):
        raise invalid(f"{where}: jmesPath needs the secret as text (objectEncoding utf-8)", REASON)
    if object_format == "pfx":
        raise invalid(f"{where}: jmesPath cannot be used with objectFormat: pfx", REASON)
    if history > 1:
        raise invalid(f"{where}: jmesPath cannot be used with objectVersionHistory", REASON)


def extract(where: str, text: str, keys: tuple[JsonKey, ...]) -> list[tuple[str, bytes]]:
    """(file name, bytes) per key; any failure names the object and the path, never a value."""
    document = _document(where, text)
    out = []
    for key in keys:
        value = key.expression.search(document)
        if value is None:
            raise _failed(f"{where}: jmesPath path {shown(key.path)} matches nothing")
        if not isinstance(value, str):
            raise _failed(
                f"{where}: jmesPath path {shown(key.path)} gives {_kind(value)}, not a string"
            )
        out.append((key.alias, value.encode()))
    return out


def _failed(message: str) -> ProviderError:
    return invalid(message, REASON)


def _document(where: str, text: str) -> Any:
    if len(text) > MAX_JSON_TEXT:
        raise _failed(
            f"{where}: jmesPath: the value is {len(text)} characters, at most {MAX_JSON_TEXT}"
        )
    deep = f"{where}: jmesPath: the JSON is nested deeper than {MAX_JSON_DEPTH}"
    try:
        document = json.loads(text)
    except RecursionError:
        raise _failed(deep) from None
    except ValueError as exc:
        # Where, never what: the text is a secret.
        raise _failed(
            f"{where}: jmesPath: the value is not JSON ({getattr(exc, 'msg', 'syntax error')} "
            f"at char {getattr(exc, 'pos', '?')})"
        ) from None
    if _too_deep(document):
        raise _failed(deep)
    return document


def _too_deep(document: Any) -> bool:
    stack = [(document, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict | list):
            if depth > MAX_JSON_DEPTH:
                return True
            children = value.values() if isinstance(value, dict) else value
            stack.extend((child, depth + 1) for child in children)
    return False


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    return "an object" if isinstance(value, dict) else "a list"
