"""Logging setup: klog-like text or JSON (--log-format-json), verbosity from -v."""

from __future__ import annotations

import json
import logging
import sys
import time


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": round(record.created * 1000, 3),
            "caller": f"{record.module}.py:{record.lineno}",
            "level": record.levelname.lower(),
            "msg": record.getMessage(),
        }
        if record.exc_info:
            entry["err"] = self.formatException(record.exc_info)
        return json.dumps(entry)


class KlogFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        t = time.gmtime(record.created)
        usec = int((record.created % 1) * 1e6)
        level = record.levelname[0] if record.levelname[0] in "IWEF" else "I"
        text = (
            f"{level}{t.tm_mon:02d}{t.tm_mday:02d} {t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d}"
            f".{usec:06d} {record.process:>7} {record.module}.py:{record.lineno}] "
            f"{record.getMessage()}"
        )
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


def setup(json_format: bool, verbosity: int) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if json_format else KlogFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbosity >= 4 else logging.INFO)
    # httpx logs request URLs at INFO; keep them for -v >= 6 only.
    for noisy in ("httpx", "httpx2", "httpcore", "lightkube"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if verbosity >= 6 else logging.WARNING)
