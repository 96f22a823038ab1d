"""Output file names: one rule set for a name, and a layout that finds clashes in linear time.

A name is checked where the parameter is parsed, so the driver's writer never sees an alias
that is absolute, climbs out, hides a component (`.`, empty) or carries control or bidi marks.
The layout keeps the files and the directories claimed so far: claiming a path costs its depth,
so a mount's checks cost the sum of its paths' depths, never the square of their number.
"""

from __future__ import annotations

import unicodedata
from typing import Protocol

from .errors import ProviderError, invalid
from .limits import MAX_NAME_BYTES, MAX_PATH_BYTES, shown

# Bidirectional controls make a name display as another (CVE-2021-42574 "trojan source").
_BIDI = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def _refused(message: str) -> ProviderError:
    return invalid(message, "objectAlias")


class Owner(Protocol):
    @property
    def index(self) -> int: ...

    def label(self) -> str: ...


def check_file_name(where: str, file_name: str) -> None:
    """A relative path of clean components (upstream checks only the first two rules)."""
    quoted = shown(file_name)
    if file_name.startswith("/") or file_name.startswith("\\"):
        raise _refused(f"{where}: objectAlias {quoted}: file name must be a relative path")
    parts = file_name.split("/")
    if ".." in parts or ".." in file_name:
        raise _refused(f"{where}: objectAlias {quoted}: file name must not contain '..'")
    if len(file_name.encode()) > MAX_PATH_BYTES:
        raise _refused(
            f"{where}: objectAlias {quoted}: file name must be at most {MAX_PATH_BYTES} bytes"
        )
    if any(part in ("", ".") for part in parts):
        raise _refused(
            f"{where}: objectAlias {quoted}: every path component must be a name "
            "(no empty component, no '.', no trailing '/')"
        )
    if any(len(part.encode()) > MAX_NAME_BYTES for part in parts):
        raise _refused(
            f"{where}: objectAlias {quoted}: a path component must be at most "
            f"{MAX_NAME_BYTES} bytes"
        )
    for char in file_name:
        if char in _BIDI or unicodedata.category(char) in ("Cc", "Cf", "Zl", "Zp"):
            raise _refused(
                f"{where}: objectAlias {quoted}: file name must not contain control, format "
                f"or bidirectional characters (found U+{ord(char):04X})"
            )


def _parents(path: str) -> list[str]:
    return [path[:i] for i, char in enumerate(path) if char == "/"]


class Layout:
    """The files and directories a mount writes, each with the object that needs it."""

    def __init__(self) -> None:
        self._files: dict[str, Owner] = {}
        # A directory, with the first object that needs it; `sealed` ones (a history object's
        # `name/`) belong to one object alone.
        self._dirs: dict[str, Owner] = {}
        self._sealed: dict[str, Owner] = {}

    def claim_file(self, path: str, owner: Owner) -> None:
        """Fail when another object writes `path`, needs it as a directory, or owns a parent."""
        other = self._files.get(path)
        if other is not None and other.index != owner.index:
            raise _refused(
                f"{owner.label()} and {other.label()} both write the file {shown(path)}: "
                "set a distinct objectAlias"
            )
        other = self._dirs.get(path)
        if other is not None and other.index != owner.index:
            raise _refused(
                f"{owner.label()} writes {shown(path)} where {other.label()} needs a directory: "
                "set a distinct objectAlias"
            )
        self._claim_parents(path, owner)
        self._files[path] = owner

    def claim_dir(self, path: str, owner: Owner) -> None:
        """`path/` and everything under it belong to `owner` (objectVersionHistory's files)."""
        other = self._files.get(path) or self._dirs.get(path)
        if other is not None and other.index != owner.index:
            raise _refused(
                f"{owner.label()} writes its versions under {shown(path + '/')} where "
                f"{other.label()} also writes: set a distinct objectAlias"
            )
        self._claim_parents(path, owner)
        self._dirs[path] = owner
        self._sealed[path] = owner

    def _claim_parents(self, path: str, owner: Owner) -> None:
        for parent in _parents(path):
            other = self._files.get(parent) or self._sealed.get(parent)
            if other is not None and other.index != owner.index:
                raise _refused(
                    f"{owner.label()} writes {shown(path)} under {other.label()}'s "
                    f"{'file' if parent in self._files else 'versions'} {shown(parent)}: "
                    "set a distinct objectAlias"
                )
        for parent in _parents(path):
            self._dirs.setdefault(parent, owner)
