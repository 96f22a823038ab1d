"""Structured logs (klog-like text, or JSON with --log-format-json) that never carry secrets.

Only fields passed in `extra` are printed, and keys that could hold credentials are redacted
whatever their value; the Azure SDK's own request logging is kept at WARNING.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}
_REDACT = ("token", "secret", "password", "assertion", "authorization", "contents", "attributes")


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in vars(record).items():
        if key in _STANDARD or key.startswith("_"):
            continue
        out[key] = "<redacted>" if any(word in key.lower() for word in _REDACT) else value
    return out


class JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": round(record.created * 1000, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
            **_fields(record),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%m%d %H:%M:%S", time.gmtime(record.created))
        fields = " ".join(f"{k}={json.dumps(v, default=str)}" for k, v in _fields(record).items())
        head = f"{record.levelname[0]}{stamp}.{int(record.msecs):03d}"
        line = f"{head} {json.dumps(record.getMessage())} {fields}".rstrip()
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def setup(json_format: bool, verbosity: int) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JSONFormatter() if json_format else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbosity >= 5 else logging.INFO)
    for noisy in ("azure", "azure.core.pipeline.policies.http_logging_policy", "aiohttp.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
