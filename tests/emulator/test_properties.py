"""Property tests of the pure parts: paging and routing."""

from __future__ import annotations

import json
from typing import Any
from unittest.mock import MagicMock
from urllib.parse import parse_qs, urlsplit

from aiohttp.test_utils import make_mocked_request
from hypothesis import given, settings
from hypothesis import strategies as st

from keyvault_emulator.routing import Route
from keyvault_emulator.vault_common import NAME_RE, KvContext, page


def _ctx(query: str) -> KvContext:
    request = make_mocked_request("GET", "/secrets" + query)
    return KvContext(
        request, MagicMock(), MagicMock(), "https://kv-test.vault.azure.net", {}, MagicMock(), None
    )


@settings(max_examples=15, deadline=None)
@given(n=st.integers(0, 80), size=st.integers(1, 25))
def test_paging_yields_each_item_once(n: int, size: int) -> None:
    items = [{"id": str(i)} for i in range(n)]
    seen: list[Any] = []
    query = f"?api-version=7.6&maxresults={size}"
    pages = 0
    while True:
        body = json.loads(page(_ctx(query), items).body)  # type: ignore[arg-type]
        assert len(body["value"]) <= size
        seen += body["value"]
        pages += 1
        if not body["nextLink"]:
            break
        link = urlsplit(body["nextLink"])
        assert link.path == "/secrets"
        assert parse_qs(link.query)["maxresults"] == [str(size)]
        query = "?" + link.query
    assert seen == items
    assert pages == max(1, -(-n // size))


NAMES = st.from_regex(NAME_RE, fullmatch=True)


async def _h(ctx: object) -> Any:
    return None


@settings(max_examples=40, deadline=None)
@given(name=NAMES, version=st.one_of(st.just(""), st.from_regex(r"[0-9a-f]{32}", fullmatch=True)))
def test_object_routes_capture_name_and_version(name: str, version: str) -> None:
    route = Route("GET", "/secrets/{name}/{version?}", _h)
    for path in (
        f"/secrets/{name}/{version}",
        f"/secrets/{name}" + (f"/{version}" if version else ""),
    ):
        m = route.regex.match(path)
        assert m is not None
        assert m.group("name") == name
        assert (m.group("version") or "") == version
    assert Route("GET", "/secrets/{name}/versions", _h).regex.match(f"/secrets/{name}/versions")
