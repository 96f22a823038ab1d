"""`python -m csi_driver` / `secrets-store-csi-driver`: upstream's flags, then serve."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Sequence

from prometheus_client import disable_created_metrics

from .cli import start
from .config import parse_args


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["standalone"]:  # a word, never a Go flag: upstream's flags are unaffected
        from . import standalone

        return standalone.main(args[1:])
    config = start(parse_args, args)
    if isinstance(config, int):
        return config
    from . import logs
    from .server import run

    logs.setup(config.log_format_json, config.verbosity)
    disable_created_metrics()  # type: ignore[no-untyped-call]
    asyncio.run(run(config))
    return 0


if __name__ == "__main__":
    sys.exit(main())
