# Over 400 lines: one transport, its connection pool, and the HTTP/1.1 answer reader it needs.
"""A lean azure-core async transport: HTTP/1.1 over asyncio streams, TLS, keep-alive, bounded.

Why: aiohttp under the Key Vault and identity clients cost ~8 ms of CPU per 50 GETs and ~55 ms of
CPU to import (~1.4 s under upstream's 50m quota) for features the provider never uses (cookies,
redirects, multipart, compression, WebSockets). This does what the SDK pipeline needs of a
transport and no more: one request, one answer read whole (at most MAX_HTTP_BODY bytes), the
connection kept for the next request unless the server said `Connection: close`.

Errors are mapped as azure-core's AioHttpTransport maps aiohttp's, so the retry policy counts
them the same: nothing could be sent (refused, DNS, TLS, connect timeout) → ServiceRequestError
(ServiceRequestTimeoutError); the server hung up without a byte of answer → ServiceRequestError
(aiohttp: ServerDisconnectedError); a broken answer (bad status line or headers, too large) →
ServiceResponseError; a body cut short → IncompleteReadError; no answer within `read_timeout`
→ ServiceResponseTimeoutError (`read_timeout` bounds the whole answer, where aiohttp bounds
each read; answers here are small). A pooled connection the server had closed while idle is retried
once on a new connection, only when nothing of an answer arrived.

Not done: HTTP proxies (`make_transport` keeps azure-core's AioHttpTransport when HTTP(S)_PROXY or
ALL_PROXY is set, as the provider did before), compression (never asked for), files (multipart).
"""

from __future__ import annotations

import asyncio
import os
import ssl
import time
from collections import deque
from typing import Any
from urllib.parse import urlencode, urlsplit

from azure.core.configuration import ConnectionConfiguration
from azure.core.exceptions import (
    IncompleteReadError,
    ServiceRequestError,
    ServiceRequestTimeoutError,
    ServiceResponseError,
    ServiceResponseTimeoutError,
)
from azure.core.pipeline.transport import AsyncHttpTransport
from azure.core.rest import HttpRequest
from azure.core.rest._http_response_impl_async import AsyncHttpResponseImpl
from azure.core.utils import CaseInsensitiveDict

from .limits import MAX_HTTP_BODY, MAX_HTTP_HEAD

# Idle connections kept per (scheme, host, port, TLS settings): the fetch concurrency of a mount
# (16) reuses them all; more are closed. Hosts per transport: a vault, or an identity service.
MAX_IDLE_PER_HOST = 16
MAX_POOLED_HOSTS = 8
# aiohttp's keep-alive default: an idle connection older than this is closed, not reused.
IDLE_SECONDS = 15.0
# aiohttp's default connector limit: requests beyond this many in flight per transport wait.
MAX_CONNECTIONS = 100
_NO_BODY = frozenset((204, 304))


def env_proxies() -> bool:
    """Whether the environment names an HTTP proxy (then aiohttp, which reads them, is used)."""
    return any(k.lower() in ("https_proxy", "http_proxy", "all_proxy") for k in os.environ)


def make_transport(**kwargs: Any) -> AsyncHttpTransport[Any, Any]:
    """The transport for one SDK client: ours, or aiohttp's when a proxy is configured."""
    if env_proxies():
        from azure.core.pipeline.transport import AioHttpTransport

        return AioHttpTransport(**kwargs)  # type: ignore[no-any-return]
    return LeanTransport(**kwargs)


class _Stale(Exception):
    """The server closed the connection before any byte of an answer."""


_default_context: ssl.SSLContext | None = None


def default_context() -> ssl.SSLContext:
    """The system trust (honours SSL_CERT_FILE / SSL_CERT_DIR), built once per process."""
    global _default_context
    if _default_context is None:
        _default_context = ssl.create_default_context()
    return _default_context


class _Conn:
    __slots__ = ("idle_since", "reader", "writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer, self.idle_since = reader, writer, 0.0

    def usable(self, now: float) -> bool:
        return (
            now - self.idle_since < IDLE_SECONDS
            and not self.reader.at_eof()
            and not self.writer.is_closing()
        )

    def close(self) -> None:
        self.writer.close()


_Key = tuple[str, str, int, str, "ssl.SSLContext | None"]


class LeanResponse(AsyncHttpResponseImpl):
    """An answer read whole: `body()`, `text()`, `json()`, `read()` and the iterators all serve
    the bytes in memory; there is no connection behind it to close."""

    def __init__(
        self,
        request: HttpRequest,
        status: int,
        reason: str,
        headers: CaseInsensitiveDict,
        body: bytes,
        block_size: int,
    ) -> None:
        super().__init__(
            request=request,
            internal_response=None,
            block_size=block_size,
            status_code=status,
            reason=reason,
            content_type=headers.get("content-type"),
            headers=headers,
            stream_download_generator=_chunks,
        )
        self._content = body

    def __setattr__(self, attr: str, value: Any) -> None:
        # azure-core's back-compat __setattr__ renames public names; ours are all private.
        if attr[0] == "_":
            object.__setattr__(self, attr, value)
        else:
            super().__setattr__(attr, value)  # type: ignore[no-untyped-call]

    def body(self) -> bytes:
        assert self._content is not None
        return self._content

    async def load_body(self) -> None:
        return None

    async def close(self) -> None:
        self._is_closed = True


async def _chunks(response: LeanResponse, **_: Any) -> Any:
    content, size = response.body(), response._block_size
    for i in range(0, len(content), size):
        yield content[i : i + size]


class LeanTransport(AsyncHttpTransport[HttpRequest, LeanResponse]):
    """HTTP/1.1 with keep-alive pooling; `connection_verify`/`connection_cert`,
    `connection_timeout` and `read_timeout` as azure-core passes them (per client or per call)."""

    def __init__(self, **kwargs: Any) -> None:
        self.connection_config = ConnectionConfiguration(**kwargs)
        self._idle: dict[_Key, deque[_Conn]] = {}
        self._contexts: dict[tuple[Any, Any], ssl.SSLContext] = {}
        self._slots = asyncio.Semaphore(MAX_CONNECTIONS)

    async def __aenter__(self) -> LeanTransport:
        await self.open()
        return self

    async def __aexit__(self, *args: object) -> None:
        await self.close()

    async def open(self) -> None:
        return None

    async def close(self) -> None:
        idle, self._idle = self._idle, {}
        for conns in idle.values():
            for conn in conns:
                conn.close()

    def _verify_context(self, verify: Any, cert: Any) -> ssl.SSLContext:
        if verify is True and not cert:
            return default_context()
        context = self._contexts.get((verify, cert))
        if context is None:
            if verify is False:
                context = ssl.create_default_context()
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
            elif verify is True:
                context = ssl.create_default_context()
            elif os.path.isdir(verify):
                context = ssl.create_default_context(capath=verify)
            else:
                context = ssl.create_default_context(cafile=verify)
            if cert:
                context.load_cert_chain(*(cert if isinstance(cert, tuple) else (cert,)))
            self._contexts[(verify, cert)] = context
        return context

    async def send(self, request: HttpRequest, **config: Any) -> LeanResponse:
        if not isinstance(request, HttpRequest):
            raise TypeError("LeanTransport sends azure.core.rest.HttpRequest only")
        if config.get("proxies") or config.get("proxy"):
            raise ServiceRequestError("LeanTransport does not send through HTTP proxies")
        url = urlsplit(request.url)
        tls = url.scheme == "https"
        context: ssl.SSLContext | None = None
        if tls:
            context = config.get("ssl") or self._verify_context(
                config.get("connection_verify", self.connection_config.verify),
                config.get("connection_cert", self.connection_config.cert),
            )
        host = url.hostname or ""
        port = url.port or (443 if tls else 80)
        key: _Key = (url.scheme, host, port, config.get("server_hostname") or host, context)
        message = _message(request, url.netloc, url.path or "/", url.query)
        timeouts = (
            config.get("connection_timeout", self.connection_config.timeout),
            config.get("read_timeout", self.connection_config.read_timeout),
        )
        async with self._slots:
            status, reason, headers, body = await self._exchange(
                key, message, request.method, timeouts
            )
        response = LeanResponse(
            request, status, reason, headers, body, self.connection_config.data_block_size
        )
        if not config.get("stream"):
            response._is_stream_consumed = True
            response._is_closed = True
        return response

    async def _exchange(
        self, key: _Key, message: bytes, method: str, timeouts: tuple[float, float]
    ) -> tuple[int, str, CaseInsensitiveDict, bytes]:
        conn = self._take(key)
        if conn is not None:
            try:
                return await self._round_trip(key, conn, message, method, timeouts[1])
            except _Stale:
                pass  # closed by the server while idle: once more on a new connection
        conn = await _connect(key, timeouts[0])
        try:
            return await self._round_trip(key, conn, message, method, timeouts[1])
        except _Stale:
            raise ServiceRequestError("the server closed the connection unanswered") from None

    def _take(self, key: _Key) -> _Conn | None:
        conns = self._idle.get(key)
        now = time.monotonic()
        while conns:
            conn = conns.pop()
            if conn.usable(now):
                return conn
            conn.close()
        return None

    def _give_back(self, key: _Key, conn: _Conn) -> None:
        conns = self._idle.get(key)
        if conns is None:
            if len(self._idle) >= MAX_POOLED_HOSTS:
                conn.close()
                return
            conns = self._idle[key] = deque()
        if len(conns) >= MAX_IDLE_PER_HOST:
            conn.close()
            return
        conn.idle_since = time.monotonic()
        conns.append(conn)

    async def _round_trip(
        self, key: _Key, conn: _Conn, message: bytes, method: str, read_timeout: float
    ) -> tuple[int, str, CaseInsensitiveDict, bytes]:
        try:
            conn.writer.write(message)
            async with asyncio.timeout(read_timeout):
                status, reason, headers, keep = await _read_head(conn.reader)
                body, delimited = await _read_body(conn.reader, headers, method, status)
        except TimeoutError:
            conn.close()
            raise ServiceResponseTimeoutError(
                f"no answer within the read timeout ({read_timeout:g}s)"
            ) from None
        except BaseException:
            conn.close()
            raise
        if keep and delimited:
            self._give_back(key, conn)
        else:
            conn.close()
        return status, reason, headers, body


async def _connect(key: _Key, connect_timeout: float) -> _Conn:
    _, host, port, sni, context = key
    try:
        async with asyncio.timeout(connect_timeout):
            reader, writer = await asyncio.open_connection(
                host,
                port,
                ssl=context,
                server_hostname=sni if context is not None else None,
                limit=MAX_HTTP_HEAD,
            )
    except TimeoutError:
        raise ServiceRequestTimeoutError(
            f"cannot connect to {host}:{port} within {connect_timeout:g}s"
        ) from None
    except (OSError, ssl.SSLError, ValueError) as exc:
        raise ServiceRequestError(f"cannot connect to {host}:{port}: {exc}", error=exc) from exc
    return _Conn(reader, writer)


def _message(request: HttpRequest, netloc: str, path: str, query: str) -> bytes:
    """The request head and body as one buffer (one write, one TLS record when small)."""
    body = request.content
    if isinstance(body, dict):
        body = urlencode(body, doseq=True)
    if isinstance(body, str):
        body = body.encode("utf-8")
    if body is not None and not isinstance(body, bytes):
        raise TypeError("LeanTransport sends str, bytes or form bodies only")
    target = f"{path}?{query}" if query else path
    lines = [f"{request.method} {target} HTTP/1.1"]
    if "host" not in request.headers:
        lines.append(f"Host: {netloc.rpartition('@')[2]}")
    for name, value in request.headers.items():
        if name.lower() != "content-length":
            lines.append(f"{name}: {value}")
    if body or request.method in ("POST", "PUT", "PATCH"):
        lines.append(f"Content-Length: {len(body or b'')}")
    head = "\r\n".join(lines)
    if "\n" in head.replace("\r\n", "") or "\r" in head.replace("\r\n", ""):
        raise ValueError("a request header contains a line break")
    return (head + "\r\n\r\n").encode("latin-1") + (body or b"")


async def _read_head(reader: asyncio.StreamReader) -> tuple[int, str, CaseInsensitiveDict, bool]:
    while True:
        try:
            raw = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError as exc:
            if not exc.partial:
                raise _Stale() from None
            raise ServiceResponseError("the server closed the connection mid-answer") from None
        except asyncio.LimitOverrunError:
            raise ServiceResponseError(
                f"the answer's headers exceed {MAX_HTTP_HEAD} bytes"
            ) from None
        except ConnectionError:
            raise _Stale() from None
        status, reason, headers, keep = _parse_head(raw)
        if not 100 <= status < 200:
            return status, reason, headers, keep


def _parse_head(raw: bytes) -> tuple[int, str, CaseInsensitiveDict, bool]:
    lines = raw.decode("latin-1").split("\r\n")
    version, _, rest = lines[0].partition(" ")
    code, _, reason = rest.partition(" ")
    if not version.startswith("HTTP/1.") or len(code) != 3 or not code.isdigit():
        raise ServiceResponseError(f"not an HTTP/1.x status line: {lines[0][:40]!r}")
    headers = CaseInsensitiveDict()
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise ServiceResponseError(f"malformed answer header: {line[:40]!r}")
        value = value.strip()
        previous = headers.get(name)
        headers[name] = value if previous is None else f"{previous}, {value}"
    connection = (headers.get("connection") or "").lower()
    keep = "close" not in connection and (version != "HTTP/1.0" or "keep-alive" in connection)
    return int(code), reason, headers, keep


async def _read_body(
    reader: asyncio.StreamReader, headers: CaseInsensitiveDict, method: str, status: int
) -> tuple[bytes, bool]:
    """The body and whether its end was delimited (else the connection ends with it)."""
    if method == "HEAD" or status in _NO_BODY:
        return b"", True
    try:
        if "chunked" in (headers.get("transfer-encoding") or "").lower():
            return await _read_chunked(reader), True
        length = headers.get("content-length")
        if length is not None:
            size = int(length) if length.isdigit() else -1
            if not 0 <= size <= MAX_HTTP_BODY:
                raise ServiceResponseError(f"answer body of {length[:20]} bytes refused")
            return await reader.readexactly(size), True
        body = await reader.read(MAX_HTTP_BODY + 1)
        while body and len(body) <= MAX_HTTP_BODY and not reader.at_eof():
            body += await reader.read(MAX_HTTP_BODY + 1 - len(body))
        _check_size(len(body))
        return body, False
    except asyncio.IncompleteReadError as exc:
        raise IncompleteReadError(f"answer body cut short: {exc}") from None
    except ConnectionError as exc:
        raise IncompleteReadError(f"answer body cut short: {exc}") from None
    except asyncio.LimitOverrunError:
        raise ServiceResponseError("malformed chunk line in the answer") from None


def _check_size(size: int) -> None:
    if size > MAX_HTTP_BODY:
        raise ServiceResponseError(f"answer body larger than {MAX_HTTP_BODY} bytes refused")


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    parts: list[bytes] = []
    total = 0
    while True:
        line = await reader.readuntil(b"\r\n")
        size_text = line.split(b";", 1)[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError:
            raise ServiceResponseError("malformed chunk size in the answer") from None
        total += size
        _check_size(total)
        if size == 0:
            while await reader.readuntil(b"\r\n") != b"\r\n":  # trailers
                pass
            return b"".join(parts)
        chunk = await reader.readexactly(size + 2)
        if chunk[-2:] != b"\r\n":
            raise ServiceResponseError("malformed chunk in the answer")
        parts.append(chunk[:-2])
