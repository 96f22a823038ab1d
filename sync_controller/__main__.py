"""`python -m sync_controller` / `secrets-store-sync-controller`: the Sync Controller's flags."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Sequence

from csi_driver.cli import start

from .config import parse_args


def main(argv: Sequence[str] | None = None) -> int:
    config = start(parse_args, sys.argv[1:] if argv is None else argv)
    if isinstance(config, int):
        return config
    from csi_driver import logs

    from .server import run

    logs.setup(config.log_json, config.verbosity)
    return asyncio.run(run(config))


if __name__ == "__main__":
    sys.exit(main())
