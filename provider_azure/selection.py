"""Selections ("mount all"): an `objects` entry that selects by name pattern and/or tags.

`objectNamePattern` is a glob over Key Vault names, not a regular expression: `*` (any run,
empty included) and `?` (one character) among the name characters `[-A-Za-z0-9]`, matched
without case (Key Vault names ignore case) against the whole name. The matcher is the
two-pointer glob algorithm: at most len(pattern) * len(name) steps (127 * 127), so no pattern
can make it backtrack without bound (a regex such as `(a*)*b` could). `objectTags` is a map that
every selected object's tags must contain, names and values compared exactly.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

import yaml

from .errors import invalid
from .limits import MAX_PATTERN, MAX_TAG_NAME, MAX_TAG_VALUE, MAX_TAGS, shown

_PATTERN = re.compile(r"^[-A-Za-z0-9*?]+$")
# Fields a selection cannot take: it names no single object and writes each under its name.
_NAMED_ONLY = ("objectName", "objectAlias", "objectVersion", "objectVersionHistory")


@dataclass(frozen=True)
class Selection:
    pattern: str = ""
    tags: tuple[tuple[str, str], ...] = ()

    def matches(self, name: str, tags: Mapping[str, str] | None) -> bool:
        if self.pattern and not glob_match(self.pattern.lower(), name.lower()):
            return False
        have = tags or {}
        return all(have.get(key) == value for key, value in self.tags)

    def describe(self) -> str:
        parts = [f"objectNamePattern {self.pattern}"] if self.pattern else []
        if self.tags:
            parts.append(f"{len(self.tags)} objectTags")
        return " and ".join(parts)


def glob_match(pattern: str, name: str) -> bool:
    """`pattern` (`*`, `?`, literals) matches all of `name`; linear backtracking to the last `*`."""
    p = n = 0
    star, resume = -1, 0
    while n < len(name):
        if p < len(pattern) and pattern[p] in ("?", name[n]):
            p, n = p + 1, n + 1
        elif p < len(pattern) and pattern[p] == "*":
            star, resume = p, n
            p += 1
        elif star >= 0:
            resume += 1
            p, n = star + 1, resume
        else:
            return False
    return all(char == "*" for char in pattern[p:])


def is_selection(raw: Mapping[str, str], nodes: Mapping[str, yaml.Node]) -> bool:
    return "objectNamePattern" in raw or "objectTags" in nodes


def parse_selection(
    where: str, raw: Mapping[str, str], nodes: Mapping[str, yaml.Node]
) -> Selection:
    for name in _NAMED_ONLY:
        if raw.get(name):
            raise invalid(
                f"{where}: {name} cannot be used with objectNamePattern or objectTags: a "
                "selection writes every matching object under its own name",
                name,
            )
    if "jmesPath" in nodes:
        raise invalid(f"{where}: jmesPath cannot be used with a selection", "jmesPath")
    selection = Selection(_pattern(where, raw.get("objectNamePattern")), _tags(where, nodes))
    if not selection.pattern and not selection.tags:
        raise invalid(
            f"{where}: a selection needs a non-empty objectNamePattern or objectTags",
            "objectNamePattern",
        )
    return selection


def _pattern(where: str, text: str | None) -> str:
    if not text:
        return ""
    if len(text) > MAX_PATTERN or not _PATTERN.match(text):
        raise invalid(
            f"{where}: objectNamePattern {shown(text)} must be 1-{MAX_PATTERN} characters of "
            "[-a-zA-Z0-9] with * (any run) and ? (one character)",
            "objectNamePattern",
        )
    return text


def _tags(where: str, nodes: Mapping[str, yaml.Node]) -> tuple[tuple[str, str], ...]:
    node = nodes.get("objectTags")
    if node is None:
        return ()
    if not isinstance(node, yaml.MappingNode) or not all(
        isinstance(k, yaml.ScalarNode) and isinstance(v, yaml.ScalarNode) for k, v in node.value
    ):
        raise invalid(f"{where}: objectTags must be a map of tag names to values", "objectTags")
    tags = {key.value: value.value for key, value in node.value}
    if len(tags) > MAX_TAGS:
        raise invalid(
            f"{where}: objectTags has {len(tags)} tags, at most {MAX_TAGS} (Key Vault's limit)",
            "objectTags",
        )
    for key, value in tags.items():
        if not key or len(key) > MAX_TAG_NAME or len(value) > MAX_TAG_VALUE:
            raise invalid(
                f"{where}: objectTags {shown(key)}: a tag name is 1-{MAX_TAG_NAME} characters "
                f"and a value at most {MAX_TAG_VALUE} (Key Vault's limits)",
                "objectTags",
            )
    return tuple(sorted(tags.items()))
