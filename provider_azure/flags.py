"""Go `flag` package syntax, so upstream's manifests and scripts work unchanged.

`-name` and `--name` are the same; values as `-name=value` or `-name value`; booleans as the
bare flag or `=true/false` (strconv.ParseBool); durations as Go durations (`5s`, `1m30s`).
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from typing import Any

_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "μs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}
_PART = re.compile(r"(\d+\.?\d*|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
TRUE = {"1", "t", "T", "TRUE", "true", "True"}
FALSE = {"0", "f", "F", "FALSE", "false", "False"}


class FlagError(ValueError):
    pass


def parse_duration(text: str) -> float:
    """Seconds from a Go duration string."""
    s = text.strip()
    sign = 1.0
    if s[:1] in "+-" and s:
        sign = -1.0 if s[0] == "-" else 1.0
        s = s[1:]
    if s == "0":
        return 0.0
    if not s:
        raise FlagError(f"invalid duration {text!r}")
    total, pos = 0.0, 0
    for match in _PART.finditer(s):
        if match.start() != pos:
            raise FlagError(f"invalid duration {text!r}")
        total += float(match.group(1)) * _UNITS[match.group(2)]
        pos = match.end()
    if pos != len(s):
        raise FlagError(f"invalid duration {text!r}")
    return sign * total


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
            if not eq or value in TRUE:
                values[name] = True
            elif value in FALSE:
                values[name] = False
            else:
                raise FlagError(f'invalid boolean value "{value}" for -{name}')
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
