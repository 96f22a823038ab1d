"""The HTTP endpoints, `/healthz` and `/metrics`, on plain asyncio streams.

Upstream serves both with Go's net/http. A web framework would cost the provider a tenth of a
second of CPU at start (seconds under a 50m quota) for two GET routes, so this is the smallest
HTTP/1.1 server that answers them: one request per connection, bounded request head, no body.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

# (status, content type, body)
Answer = tuple[int, str, bytes]
Route = Callable[[], Awaitable[Answer]]

MAX_HEAD = 8192
READ_TIMEOUT = 10.0
_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed"}
_REASONS |= {503: "Service Unavailable"}


async def serve(routes: dict[str, Route], port: int, host: str | None = None) -> asyncio.Server:
    """Serve GET `routes` (path → answer) on `port`, all interfaces unless `host` is given."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            status, kind, body = await _answer(reader, routes)
            reason = _REASONS.get(status, "")
            head = (
                f"HTTP/1.1 {status} {reason}\r\nContent-Type: {kind}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            )
            writer.write(head.encode() + body)
            await writer.drain()
        except (ConnectionError, TimeoutError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    return await asyncio.start_server(handle, host, port, limit=MAX_HEAD)


async def _answer(reader: asyncio.StreamReader, routes: dict[str, Route]) -> Answer:
    try:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), READ_TIMEOUT)
    except asyncio.LimitOverrunError:
        return 400, "text/plain", b"request head too large\n"
    method, _, rest = head.split(b"\r\n", 1)[0].decode("latin-1").partition(" ")
    path = rest.split(" ", 1)[0].split("?", 1)[0]
    route = routes.get(path)
    if route is None:
        return 404, "text/plain", b"404 page not found\n"
    if method != "GET":
        return 405, "text/plain", b"method not allowed\n"
    return await route()
