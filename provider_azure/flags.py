"""Go `flag` package syntax, so upstream's manifests and scripts work unchanged.

`-name` and `--name` are the same; values as `-name=value` or `-name value`; booleans as the
bare flag or `=true/false` (strconv.ParseBool); durations as Go durations (`5s`, `1m30s`).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

from secrets_store_api.goflags import FlagError, parse_bool, parse_duration

__all__ = ["Flag", "FlagError", "parse", "parse_duration", "usage"]


@dataclass(frozen=True)
class Flag:
    name: str
    kind: type
    default: Any
    usage: str
    duration: bool = False


def parse(flags: list[Flag], argv: list[str]) -> tuple[dict[str, Any], list[str]]:
    """Values by flag name (dashes kept) and the remaining positional arguments."""
    by_name = {f.name: f for f in flags}
    values: dict[str, Any] = {f.name: f.default for f in flags}
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            return values, argv[i + 1 :]
        if not arg.startswith("-") or arg == "-":
            return values, argv[i:]
        body = arg[2:] if arg.startswith("--") else arg[1:]
        if not body or body.startswith("-") or body.startswith("="):
            raise FlagError(f"bad flag syntax: {arg}")
        name, eq, value = body.partition("=")
        if name in ("h", "help"):
            raise FlagError("help requested")
        flag = by_name.get(name)
        if flag is None:
            raise FlagError(f"flag provided but not defined: -{name}")
        if flag.kind is bool:
            try:
                values[name] = parse_bool(value) if eq else True
            except FlagError:
                raise FlagError(f'invalid boolean value "{value}" for -{name}') from None
            i += 1
            continue
        if not eq:
            if i + 1 >= len(argv):
                raise FlagError(f"flag needs an argument: -{name}")
            value = argv[i + 1]
            i += 1
        i += 1
        try:
            if flag.duration:
                values[name] = parse_duration(value)
            elif flag.kind is int:
                values[name] = int(value, 0)
            else:
                values[name] = value
        except ValueError:
            raise FlagError(f'invalid value "{value}" for flag -{name}') from None
    return values, []


def usage(flags: list[Flag], program: str) -> str:
    lines = [f"Usage of {program}:"]
    for f in flags:
        kind = "" if f.kind is bool else (" duration" if f.duration else f" {f.kind.__name__}")
        lines.append(f"  -{f.name}{kind}\n    \t{f.usage} (default {f.default!r})")
    return "\n".join(lines)


def die(message: str) -> None:
    print(message, file=sys.stderr)
    raise SystemExit(2)
