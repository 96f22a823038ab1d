"""The provider's HTTP endpoints (/healthz, /metrics) on plain asyncio: routes, methods, limits."""

from __future__ import annotations

import asyncio

from provider_azure import endpoints


async def _exchange(port: int, raw: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(raw)
    await writer.drain()
    answer = await reader.read()
    writer.close()
    return answer


async def test_routes_methods_and_a_bounded_head() -> None:
    async def ok() -> endpoints.Answer:
        return 200, "text/plain; charset=utf-8", b"ok"

    server = await endpoints.serve({"/healthz": ok}, 0, "127.0.0.1")
    port = server.sockets[0].getsockname()[1]
    try:
        answer = await _exchange(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 200 OK\r\n") and answer.endswith(b"\r\n\r\nok")
        assert b"Content-Length: 2\r\n" in answer
        answer = await _exchange(port, b"GET /healthz?probe=1 HTTP/1.1\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 200 ")
        assert (await _exchange(port, b"GET /nope HTTP/1.1\r\n\r\n")).startswith(b"HTTP/1.1 404 ")
        answer = await _exchange(port, b"POST /healthz HTTP/1.1\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 405 ")
        huge = b"GET /healthz HTTP/1.1\r\nX: " + b"a" * 20_000 + b"\r\n\r\n"
        assert (await _exchange(port, huge)).startswith(b"HTTP/1.1 400 ")
    finally:
        server.close()
        await server.wait_closed()
