"""`python -m sync_controller` / `secrets-store-sync-controller`: the Sync Controller's flags."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Sequence

from . import __version__
from .config import FlagError, parse_args


def main(argv: Sequence[str] | None = None) -> int:
    try:
        config = parse_args(list(sys.argv[1:] if argv is None else argv))
    except FlagError as e:
        print(e, file=sys.stderr)
        return 2
    if config.version:
        print(f'{{"version":"{__version__}","runtime":"python {sys.version.split()[0]}"}}')
        return 0
    from csi_driver import logs

    from .server import run

    logs.setup(config.log_json, config.verbosity)
    return asyncio.run(run(config))


if __name__ == "__main__":
    sys.exit(main())
