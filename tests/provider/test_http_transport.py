"""The provider's own azure-core transport against a real HTTP server on loopback (asyncio
streams, plain and TLS): bodies, keep-alive, stale connections, errors and their azure-core
types, size bounds; and through an azure-core pipeline with the retry policy."""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from azure.core.exceptions import (
    IncompleteReadError,
    ServiceRequestError,
    ServiceRequestTimeoutError,
    ServiceResponseError,
    ServiceResponseTimeoutError,
)
from azure.core.pipeline import AsyncPipeline
from azure.core.pipeline.policies import AsyncRetryPolicy
from azure.core.rest import HttpRequest

from keyvault_emulator.tls import ensure_pki
from provider_azure import http_transport
from provider_azure.http_transport import LeanResponse, LeanTransport

Reply = Callable[[bytes, asyncio.StreamWriter], Awaitable[bool]]


@dataclass
class Server:
    """Answers each request with `reply(request bytes, writer)`; False closes the connection."""

    reply: Reply
    connections: int = 0
    requests: list[bytes] = field(default_factory=list)
    port: int = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                body = await reader.readexactly(length)
                self.requests.append(head + body)
                if not await self.reply(head + body, writer):
                    break
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@pytest.fixture
async def serve() -> AsyncIterator[Callable[..., Awaitable[Server]]]:
    servers: list[asyncio.Server] = []

    async def start(reply: Reply, tls: ssl.SSLContext | None = None) -> Server:
        server = Server(reply)
        srv = await asyncio.start_server(server.handle, "127.0.0.1", 0, ssl=tls)
        server.port = srv.sockets[0].getsockname()[1]
        servers.append(srv)
        return server

    yield start
    for srv in servers:
        srv.close()
        await srv.wait_closed()


def answer(body: bytes, *headers: str, status: str = "200 OK") -> Reply:
    async def reply(_: bytes, writer: asyncio.StreamWriter) -> bool:
        head = [f"HTTP/1.1 {status}", f"Content-Length: {len(body)}", *headers]
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + body)
        return not any(h.lower() == "connection: close" for h in headers)

    return reply


def url(server: Server, path: str = "/secrets/a?api-version=7.4") -> str:
    return f"http://127.0.0.1:{server.port}{path}"


async def test_content_length_answer_read_whole(serve: Callable[..., Awaitable[Server]]) -> None:
    server = await serve(answer(b'{"value":"v"}', "Content-Type: application/json", "X-A: 1"))
    async with LeanTransport() as transport:
        request = HttpRequest("GET", url(server), headers={"Accept": "application/json"})
        response = await transport.send(request)
    assert isinstance(response, LeanResponse)
    assert response.status_code == 200 and response.reason == "OK"
    assert response.headers["x-a"] == "1" and response.headers["CONTENT-TYPE"] == "application/json"
    assert response.body() == b'{"value":"v"}' and response.json() == {"value": "v"}
    assert response.text() == '{"value":"v"}' and await response.read() == b'{"value":"v"}'
    sent = server.requests[0]
    assert sent.startswith(b"GET /secrets/a?api-version=7.4 HTTP/1.1\r\n")
    assert f"Host: 127.0.0.1:{server.port}".encode() in sent and b"Accept: application/json" in sent


async def test_chunked_answer_and_form_post(serve: Callable[..., Awaitable[Server]]) -> None:
    async def chunked(_: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5;ext=1\r\nhello\r\n7\r\n, world\r\n0\r\nX-Trailer: t\r\n\r\n"
        )
        return True

    server = await serve(chunked)
    async with LeanTransport() as transport:
        request = HttpRequest("POST", url(server, "/token"), data={"grant_type": "x y", "a": "b"})
        response = await transport.send(request)
        again = await transport.send(HttpRequest("GET", url(server)))
    assert response.body() == b"hello, world" and again.body() == b"hello, world"
    assert server.connections == 1  # the chunked answer ended where it said: connection reused
    assert server.requests[0].endswith(b"Content-Length: 18\r\n\r\ngrant_type=x+y&a=b")


async def test_keep_alive_reuses_and_connection_close_does_not(
    serve: Callable[..., Awaitable[Server]],
) -> None:
    kept = await serve(answer(b"ok"))
    closing = await serve(answer(b"ok", "Connection: close"))
    async with LeanTransport() as transport:
        for _ in range(3):
            await transport.send(HttpRequest("GET", url(kept)))
            await transport.send(HttpRequest("GET", url(closing)))
        # Concurrent requests each take their own connection, then all are kept.
        await asyncio.gather(*(transport.send(HttpRequest("GET", url(kept))) for _ in range(4)))
        await asyncio.gather(*(transport.send(HttpRequest("GET", url(kept))) for _ in range(4)))
    assert kept.connections == 4 and len(kept.requests) == 11
    assert closing.connections == 3


async def test_answer_until_close_without_length(serve: Callable[..., Awaitable[Server]]) -> None:
    async def http10(_: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nall of it")
        return False

    server = await serve(http10)
    async with LeanTransport() as transport:
        first = await transport.send(HttpRequest("GET", url(server)))
        second = await transport.send(HttpRequest("GET", url(server)))
    assert first.body() == second.body() == b"all of it" and server.connections == 2


async def test_idle_connection_closed_by_server_is_retried_once(
    serve: Callable[..., Awaitable[Server]],
) -> None:
    """The server hangs up an idle kept-alive connection after answering; the next request
    finds it dead with nothing received and goes out again on a new connection."""
    served = 0

    async def once_per_connection(_: bytes, writer: asyncio.StreamWriter) -> bool:
        nonlocal served
        served += 1
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        return False  # closes without saying Connection: close

    server = await serve(once_per_connection)
    async with LeanTransport() as transport:
        await transport.send(HttpRequest("GET", url(server)))
        # Make the pooled connection look usable, as when the FIN has not arrived yet.
        conn = next(iter(transport._idle.values()))[0]
        conn.reader.at_eof = lambda: False  # type: ignore[method-assign]
        response = await transport.send(HttpRequest("GET", url(server)))
    assert response.body() == b"ok" and served == 2 and server.connections == 2


async def test_hang_up_without_answer_on_a_new_connection_is_a_request_error(
    serve: Callable[..., Awaitable[Server]],
) -> None:
    async def hang_up(_: bytes, writer: asyncio.StreamWriter) -> bool:
        return False

    server = await serve(hang_up)
    async with LeanTransport() as transport:
        with pytest.raises(ServiceRequestError) as info:
            await transport.send(HttpRequest("GET", url(server)))
    assert not isinstance(info.value, ServiceResponseError)
    assert server.connections == 1  # a new connection is never retried by the transport


async def test_connection_refused_is_a_request_error() -> None:
    probe = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    free = probe.sockets[0].getsockname()[1]  # a port nobody listens on once closed
    probe.close()
    await probe.wait_closed()
    async with LeanTransport() as transport:
        with pytest.raises(ServiceRequestError, match="cannot connect") as info:
            await transport.send(HttpRequest("GET", f"http://127.0.0.1:{free}/"))
    assert isinstance(info.value.inner_exception, ConnectionRefusedError)


async def test_read_timeout_is_a_response_timeout(serve: Callable[..., Awaitable[Server]]) -> None:
    async def silent(_: bytes, writer: asyncio.StreamWriter) -> bool:
        await asyncio.sleep(5)
        return False

    server = await serve(silent)
    async with LeanTransport(read_timeout=0.05) as transport:
        with pytest.raises(ServiceResponseTimeoutError):
            await transport.send(HttpRequest("GET", url(server)))
        assert not transport._idle  # the connection is dropped, never pooled


async def test_connect_timeout_is_a_request_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    async def never(*args: object, **kwargs: object) -> None:
        await asyncio.sleep(5)

    monkeypatch.setattr(asyncio, "open_connection", never)
    async with LeanTransport(connection_timeout=0.05) as transport:
        with pytest.raises(ServiceRequestTimeoutError):
            await transport.send(HttpRequest("GET", "http://127.0.0.1:9/"))


async def test_oversize_and_broken_answers_refused(
    serve: Callable[..., Awaitable[Server]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(http_transport, "MAX_HTTP_BODY", 1000)

    async def huge_length(_: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1001\r\n\r\n")
        return True

    async def huge_chunks(_: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for _ in range(3):
            writer.write(b"190\r\n" + b"x" * 400 + b"\r\n")
        writer.write(b"0\r\n\r\n")
        return True

    async def garbage(_: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"SSH-2.0-OpenSSH\r\n\r\n")
        return True

    async def cut_short(_: bytes, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
        return False

    async with LeanTransport() as transport:
        for reply, error, text in (
            (huge_length, ServiceResponseError, "1001 bytes refused"),
            (huge_chunks, ServiceResponseError, "larger than 1000"),
            (garbage, ServiceResponseError, "not an HTTP/1.x status line"),
            (cut_short, IncompleteReadError, "cut short"),
        ):
            server = await serve(reply)
            with pytest.raises(error, match=text):
                await transport.send(HttpRequest("GET", url(server)))
        assert not transport._idle


async def test_tls_verified_against_a_ca_and_by_name(
    serve: Callable[..., Awaitable[Server]], tmp_path: Path
) -> None:
    pki = ensure_pki(tmp_path)
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(pki.cert_path, pki.key_path)
    server = await serve(answer(b"secure"), tls)
    https = f"https://localhost:{server.port}/"
    async with LeanTransport(connection_verify=str(pki.ca_path)) as transport:
        assert (await transport.send(HttpRequest("GET", https))).body() == b"secure"
        assert (await transport.send(HttpRequest("GET", https))).body() == b"secure"
    assert server.connections == 1
    async with LeanTransport() as transport:  # system roots only: the test CA is unknown
        with pytest.raises(ServiceRequestError, match="CERTIFICATE_VERIFY_FAILED"):
            await transport.send(HttpRequest("GET", https, headers={}), connection_verify=True)
        insecure = await transport.send(HttpRequest("GET", https), connection_verify=False)
        assert insecure.body() == b"secure"


async def test_through_an_azure_core_pipeline_with_retries(
    serve: Callable[..., Awaitable[Server]],
) -> None:
    """503 then 200: the retry policy sees our responses as it sees aiohttp's."""
    statuses = ["503 Service Unavailable", "200 OK"]

    async def flaky(_: bytes, writer: asyncio.StreamWriter) -> bool:
        status = statuses.pop(0)
        body = json.dumps({"status": status}).encode()
        head = f"HTTP/1.1 {status}\r\nContent-Length: {len(body)}\r\nRetry-After: 0\r\n\r\n"
        writer.write(head.encode() + body)
        return True

    server = await serve(flaky)
    retry = AsyncRetryPolicy(retry_total=2, retry_backoff_factor=0)
    async with AsyncPipeline(LeanTransport(), policies=[retry]) as pipeline:
        result = await pipeline.run(HttpRequest("GET", url(server)), stream=False)
    assert result.http_response.status_code == 200
    assert result.http_response.json() == {"status": "200 OK"}
    assert server.connections == 1 and len(server.requests) == 2


async def test_requests_in_flight_bounded(
    serve: Callable[..., Awaitable[Server]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(http_transport, "MAX_CONNECTIONS", 2)
    busy = peak = 0

    async def slow(request: bytes, writer: asyncio.StreamWriter) -> bool:
        nonlocal busy, peak
        busy += 1
        peak = max(peak, busy)
        await asyncio.sleep(0.01)
        busy -= 1
        return await answer(b"ok")(request, writer)

    server = await serve(slow)
    async with LeanTransport() as transport:
        await asyncio.gather(*(transport.send(HttpRequest("GET", url(server))) for _ in range(6)))
    assert peak == 2 and server.connections == 2 and len(server.requests) == 6
