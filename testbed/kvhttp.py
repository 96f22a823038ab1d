"""Raw HTTP to the emulator (requests), and response validation against the JSON schemas in
tests/emulator/schemas (written from the Key Vault REST reference)."""

from __future__ import annotations

import json
from functools import cache
from typing import Any

import jsonschema
import requests

from testbed import REPO
from testbed.emulator import Emulator

SCHEMAS = REPO / "tests" / "emulator" / "schemas"


@cache
def _root(schema: str) -> dict[str, Any]:
    root: dict[str, Any] = json.loads((SCHEMAS / f"{schema}.schema.json").read_text())
    jsonschema.validators.validator_for(root).check_schema(root)  # once per file
    return root


@cache
def _validator(schema: str, definition: str) -> jsonschema.protocols.Validator:
    full = {**_root(schema), "$ref": f"#/$defs/{definition}"}
    return jsonschema.validators.validator_for(full)(full)


def validate(definition: str, body: Any, schema: str = "keyvault") -> None:
    """Validates `body` against `#/$defs/<definition>` of schemas/<schema>.schema.json."""
    _validator(schema, definition).validate(body)


class Raw:
    """A keep-alive session against one vault, authenticated as one identity."""

    def __init__(
        self,
        emulator: Emulator,
        identity: str | None,
        vault: str = "kv-test",
        suffix: str = "vault.azure.net",
        api: str = "7.6",
    ) -> None:
        self.session = requests.Session()
        self.base = f"https://{vault}.{suffix}"
        self.api = api
        self.token = emulator.token(identity) if identity else None

    def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        raw: bytes | None = None,
        token: str | None = None,
        params: dict[str, str] | None = None,
    ) -> requests.Response:
        headers = {}
        tok = token if token is not None else self.token
        if tok:
            headers["Authorization"] = f"Bearer {tok}"
        if body is not None or raw is not None:
            headers["Content-Type"] = "application/json"
        return self.session.request(
            method,
            self.base + path,
            params={"api-version": self.api, **(params or {})},
            data=raw if raw is not None else (json.dumps(body) if body is not None else None),
            headers=headers,
            timeout=10,
        )

    def ok(
        self,
        method: str,
        path: str,
        definition: str,
        body: Any = None,
        status: int = 200,
        **kw: Any,
    ) -> Any:
        resp = self.call(method, path, body, **kw)
        assert resp.status_code == status, resp.text
        data = resp.json()
        validate(definition, data)
        return data

    def error(
        self,
        method: str,
        path: str,
        status: int,
        code: str,
        body: Any = None,
        inner: str | None = None,
        **kw: Any,
    ) -> dict[str, Any]:
        resp = self.call(method, path, body, **kw)
        assert resp.status_code == status, resp.text
        data: dict[str, Any] = resp.json()
        validate("KeyVaultError", data)
        assert data["error"]["code"] == code, data
        if inner is not None:
            assert data["error"]["innerError"]["code"] == inner, data
        return data
