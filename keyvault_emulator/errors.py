"""Errors as each service words them: one exception type per wire format."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from aiohttp import web


class KeyVaultError(Exception):
    """A Key Vault data-plane error: `{"error": {"code", "message", "innerError"?}}`."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        inner_code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.inner_code = inner_code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.inner_code:
            error["innerError"] = {"code": self.inner_code}
        return {"error": error}

    def response(self) -> web.Response:
        return json_response(self.body(), status=self.status, headers=self.headers)


def bad_parameter(message: str) -> KeyVaultError:
    return KeyVaultError(400, "BadParameter", message)


class EntraError(Exception):
    """An Entra ID token-endpoint error: `error`, `error_description` with its AADSTS code."""

    def __init__(self, status: int, error: str, code: int, description: str) -> None:
        super().__init__(f"AADSTS{code}: {description}")
        self.status = status
        self.error = error
        self.code = code
        self.description = description

    def response(self) -> web.Response:
        trace_id = str(uuid.uuid4())
        correlation_id = str(uuid.uuid4())
        stamp = time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime())
        body = {
            "error": self.error,
            "error_description": (
                f"AADSTS{self.code}: {self.description} Trace ID: {trace_id} "
                f"Correlation ID: {correlation_id} Timestamp: {stamp}"
            ),
            "error_codes": [self.code],
            "timestamp": stamp,
            "trace_id": trace_id,
            "correlation_id": correlation_id,
            "error_uri": f"https://login.microsoftonline.com/error?code={self.code}",
        }
        return json_response(body, status=self.status)


class ImdsError(Exception):
    """An IMDS identity-endpoint error: `{"error", "error_description"}`."""

    def __init__(self, status: int, error: str, description: str) -> None:
        super().__init__(description)
        self.status = status
        self.error = error
        self.description = description

    def response(self) -> web.Response:
        return json_response(
            {"error": self.error, "error_description": self.description}, status=self.status
        )


def json_response(
    body: Any, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        body=json.dumps(body, separators=(",", ":")).encode(),
        status=status,
        headers=headers,
        content_type="application/json",
        charset="utf-8",
    )
