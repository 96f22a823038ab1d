"""The provider's flag table in Go `flag` syntax; parsing is secrets_store_api.goflags'
(the one parser both daemons use), so upstream's manifests and scripts work unchanged."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

from secrets_store_api.goflags import Flag as GoFlag
from secrets_store_api.goflags import FlagError, FlagSet, HelpRequested, parse_duration

__all__ = ["Flag", "FlagError", "parse", "parse_duration", "usage"]


@dataclass(frozen=True)
class Flag:
    name: str
    kind: type
    default: Any
    usage: str
    duration: bool = False

    def go(self) -> GoFlag:
        kinds = {bool: "bool", int: "int", str: "string"}
        kind = "duration" if self.duration else kinds[self.kind]
        return GoFlag(self.name, self.default, self.usage, kind)


def _flagset(flags: list[Flag], program: str) -> FlagSet:
    return FlagSet(program, (f.go() for f in flags))


def parse(flags: list[Flag], argv: list[str]) -> tuple[dict[str, Any], list[str]]:
    """Values by flag name (dashes kept) and the remaining positional arguments."""
    try:
        return _flagset(flags, "secrets-store-provider-azure").parse(argv)
    except HelpRequested:
        raise FlagError("help requested") from None


def usage(flags: list[Flag], program: str) -> str:
    return _flagset(flags, program).usage()


def die(message: str) -> None:
    print(message, file=sys.stderr)
    raise SystemExit(2)
