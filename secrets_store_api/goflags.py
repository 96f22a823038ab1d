"""Go's `flag` package, for both daemons' command lines: upstream's manifests work unchanged.

`-flag` and `--flag` are the same; values come as `--flag=value` or `--flag value`; booleans
as the bare flag or `--flag=false` (strconv.ParseBool); durations are Go durations (`1h30m`).
Each daemon declares its flags as a table of `Flag`s and parses them with one `FlagSet`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any


class FlagError(ValueError):
    """A command line Go's flag package would reject (exit status 2)."""


class HelpRequested(FlagError):
    """`-h` / `-help`: the message is the usage text."""


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


def parse_duration(text: str) -> float:
    """A Go duration (`2m`, `1h30m`, `500ms`, `-1.5h`, `0`) in seconds."""
    s = text.strip()
    sign = 1.0
    if s[:1] in "+-" and s:
        sign = -1.0 if s[0] == "-" else 1.0
        s = s[1:]
    if s == "0":
        return 0.0
    if not s:
        raise FlagError(f"time: invalid duration {text!r}")
    pos, total = 0, 0.0
    while pos < len(s):
        m = _PART.match(s, pos)
        if m is None:
            raise FlagError(f"time: invalid duration {text!r}")
        total += float(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    return sign * total


def parse_bool(text: str) -> bool:
    """Go's strconv.ParseBool."""
    if text in ("1", "t", "T", "TRUE", "true", "True"):
        return True
    if text in ("0", "f", "F", "FALSE", "false", "False"):
        return False
    raise FlagError(f"invalid boolean value {text!r}")


def parse_int(text: str) -> int:
    """Go's strconv.ParseInt with base 0 (`0x10`, `0o17`, `1_000`)."""
    try:
        return int(text, 0)
    except ValueError:
        raise FlagError(f"invalid integer value {text!r}") from None


_CONVERTERS: dict[str, Callable[[str], Any]] = {
    "string": str,
    "bool": parse_bool,
    "int": parse_int,
    "duration": parse_duration,
}


@dataclass(frozen=True)
class Flag:
    name: str
    default: Any
    help: str
    kind: str = "string"  # "string" | "bool" | "int" | "duration"

    def convert(self, text: str) -> Any:
        return _CONVERTERS[self.kind](text)


class FlagSet:
    def __init__(self, program: str, flags: Iterable[Flag] = ()) -> None:
        self.program = program
        self._flags: dict[str, Flag] = {}
        for f in flags:
            self._flags[f.name] = f

    def add(self, name: str, default: Any, help: str, kind: str = "string") -> None:
        self._flags[name] = Flag(name, default, help, kind)

    def usage(self) -> str:
        lines = [f"Usage of {self.program}:"]
        for f in sorted(self._flags.values(), key=lambda f: f.name):
            lines.append(f"  -{f.name} {'' if f.kind == 'bool' else f.kind}".rstrip())
            lines.append(f"    \t{f.help} (default {f.default!r})")
        return "\n".join(lines)

    def parse(self, argv: Sequence[str]) -> tuple[dict[str, Any], list[str]]:
        """Values for every flag (defaults filled in) and the remaining positional arguments."""
        values = {name: f.default for name, f in self._flags.items()}
        args = list(argv)
        i = 0
        while i < len(args):
            arg = args[i]
            if len(arg) < 2 or arg[0] != "-":
                break
            if arg == "--":
                i += 1
                break
            name, has_value, value = self._split(arg)
            flag = self._flags.get(name)
            if flag is None:
                raise FlagError(f"flag provided but not defined: -{name}")
            if flag.kind == "bool" and not has_value:
                values[name] = True
            else:
                if not has_value:
                    if i + 1 >= len(args):
                        raise FlagError(f"flag needs an argument: -{name}")
                    i += 1
                    value = args[i]
                values[name] = self._convert(flag, value)
            i += 1
        return values, args[i:]

    def _split(self, arg: str) -> tuple[str, bool, str]:
        body = arg[2:] if arg.startswith("--") else arg[1:]
        if not body or body[0] in "-=":
            raise FlagError(f"bad flag syntax: {arg}")
        name, has_value, value = body.partition("=")
        if name in ("h", "help"):
            raise HelpRequested(self.usage())
        return name, bool(has_value), value

    @staticmethod
    def _convert(flag: Flag, value: str) -> Any:
        try:
            return flag.convert(value)
        except FlagError as e:
            if flag.kind == "bool":
                raise FlagError(f"invalid boolean value {value!r} for -{flag.name}") from None
            raise FlagError(f"invalid value {value!r} for flag -{flag.name}: {e}") from None
