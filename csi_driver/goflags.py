"""Command-line parsing with Go's `flag` package rules, so upstream manifests work unchanged.

`-flag` and `--flag` are the same; values come as `--flag=value` or `--flag value`; booleans
take only the `=` form (`--flag=false`), as in Go; durations are Go durations (`1h30m`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from secrets_store_api.goflags import FlagError, parse_bool, parse_duration

__all__ = ["Flag", "FlagError", "FlagSet", "parse_bool", "parse_duration", "parse_int"]


def parse_int(text: str) -> int:
    try:
        return int(text, 0)
    except ValueError:
        raise FlagError(f"invalid integer value {text!r}") from None


@dataclass(frozen=True)
class Flag:
    name: str
    default: Any
    help: str
    kind: str  # "string" | "bool" | "int" | "duration"

    def convert(self, text: str) -> Any:
        converters: dict[str, Callable[[str], Any]] = {
            "string": str,
            "bool": parse_bool,
            "int": parse_int,
            "duration": parse_duration,
        }
        return converters[self.kind](text)


class FlagSet:
    def __init__(self, program: str) -> None:
        self.program = program
        self._flags: dict[str, Flag] = {}

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
            body = arg[2:] if arg.startswith("--") else arg[1:]
            if not body or body[0] in "-=":
                raise FlagError(f"bad flag syntax: {arg}")
            name, has_value, value = body.partition("=")
            if name in ("h", "help"):
                raise FlagError(self.usage())
            flag = self._flags.get(name)
            if flag is None:
                raise FlagError(f"flag provided but not defined: -{name}")
            if flag.kind == "bool":
                values[name] = flag.convert(value) if has_value else True
            else:
                if not has_value:
                    if i + 1 >= len(args):
                        raise FlagError(f"flag needs an argument: -{name}")
                    i += 1
                    value = args[i]
                try:
                    values[name] = flag.convert(value)
                except FlagError as e:
                    raise FlagError(f"invalid value {value!r} for flag -{name}: {e}") from None
            i += 1
        return values, args[i:]
