"""The start every program of the driver's image shares (`secrets-store-csi-driver`,
`secrets-store-sync-controller`): Go flags parsed, a usage error printed with exit status 2 (as
Go's flag package exits), `--version` answered with upstream's JSON line."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import Protocol, TypeVar

from secrets_store_api.goflags import FlagError

from . import __version__


class Versioned(Protocol):
    @property
    def version(self) -> bool: ...


C = TypeVar("C", bound=Versioned)


def version_line() -> str:
    return f'{{"version":"{__version__}","runtime":"python {sys.version.split()[0]}"}}'


def start(parse: Callable[[list[str]], C], args: Sequence[str]) -> C | int:
    """The parsed flags, or the exit status when the program is done: 2 after a usage error
    (printed on stderr), 0 after printing the version."""
    try:
        config = parse(list(args))
    except FlagError as e:
        print(e, file=sys.stderr)
        return 2
    if config.version:
        print(version_line())
        return 0
    return config
