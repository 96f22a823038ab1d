"""AKS identity binding: the pod's service-account token (audience `api://AKSIdentityBinding`)
exchanged at the cluster's token proxy instead of at Entra ID.

What upstream v1.8.2 does (internal/identitybinding, azidentity's customtokenproxy transport),
and so what we do: the Entra ID token request is built as for workload identity (client
credentials, the token as the client assertion) and only sent elsewhere. Its URL becomes the
proxy URL joined with the request's own path (query kept); the TLS handshake names
`--sni-name` (or, without it, the name computed at start from the API server's certificate:
cluster_sni.py) and checks the proxy's certificate against that name, trusting the cluster CA
(`/var/run/secrets/kubernetes.io/serviceaccount/ca.crt`, re-read when it changes) when that file
exists, else the system's roots. Flag and computation errors are kept and reported by the mounts
that ask for identity binding, as upstream does, so other mounts keep working.
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from . import cluster_sni
from .errors import Kind, ProviderError
from .http_transport import LeanTransport
from .limits import shown

log = logging.getLogger(__name__)

IDENTITY_BINDING_AUDIENCE = "api://AKSIdentityBinding"
DEFAULT_TOKEN_PROXY_URL = "https://kubernetes.default.svc.cluster.local"
SERVICE_ACCOUNT_CA = "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt"
# The cluster CA bundle read for the proxy's TLS (a few certificates in practice).
MAX_CA_FILE = 1024 * 1024


@dataclass(frozen=True)
class TokenProxy:
    """Where identity binding sends token requests; `problem` says why it cannot (a flag)."""

    url: str
    sni_name: str
    ca_file: str = SERVICE_ACCOUNT_CA
    problem: str = ""
    problem_kind: Kind = Kind.FAILED_PRECONDITION

    @property
    def needs_sni(self) -> bool:
        """`--sni-name` was not given: the name is to be computed (with_computed_sni)."""
        return not self.sni_name and not self.problem

    def describe(self) -> str:
        return f"the identity-binding token proxy ({self.url}, SNI {self.sni_name or '?'})"

    def check(self) -> None:
        if self.problem:
            raise ProviderError(
                self.problem_kind,
                f"useAzureTokenProxy: the provider's identity-binding proxy is not usable: "
                f"{self.problem}",
                reason="token proxy",
            )
        if not self.sni_name:
            raise ProviderError(
                Kind.INTERNAL, "useAzureTokenProxy: the SNI name was not computed", reason="sni"
            )

    def target(self, url: str) -> str:
        """`url` (an Entra ID request) sent to the proxy: its path joined to the proxy's."""
        base, req = urlsplit(self.url), urlsplit(url)
        path = base.path.rstrip("/") + "/" + req.path.lstrip("/")
        return urlunsplit((base.scheme, base.netloc, path, req.query, ""))


def configure(url_flag: str, sni_flag: str, ca_file: str = SERVICE_ACCOUNT_CA) -> TokenProxy:
    """The proxy from `--token-proxy-url` and `--sni-name`, checked by upstream's rules."""
    url = url_flag.strip() or DEFAULT_TOKEN_PROXY_URL
    sni = sni_flag.strip()
    problem = _url_problem(url)
    if not problem and sni and (len(sni) > 253 or not all(c.isalnum() or c in "-." for c in sni)):
        problem = f"--sni-name {shown(sni)} must be a DNS name"
    return TokenProxy(url, sni, ca_file, problem)


async def with_computed_sni(proxy: TokenProxy) -> TokenProxy:
    """`proxy` with the SNI name computed from the API server's certificate, or with why not."""
    try:
        name = await cluster_sni.compute(proxy.ca_file)
    except ProviderError as exc:
        log.info("identity binding unavailable: no SNI name", extra={"error": exc.message})
        return replace(proxy, problem=exc.message, problem_kind=exc.kind)
    log.info("identity-binding SNI name computed", extra={"sni_name": name, "url": proxy.url})
    return replace(proxy, sni_name=name)


# After the API server could not be reached, an identity-binding mount tries again once this
# long has passed since the last try (upstream never does: it needs a restart).
RETRY_UNREACHABLE = 30.0


class SniResolver:
    """The proxy as mounts use it: without `--sni-name`, the name computed once (started at
    start, as upstream), and again, at most every RETRY_UNREACHABLE seconds, while the last try
    could not reach the API server. Other failures (a certificate without the SAN, no CA) are
    kept, as upstream keeps them."""

    def __init__(self, proxy: TokenProxy, clock: Callable[[], float] = time.monotonic) -> None:
        self.configured = proxy
        self.current = proxy
        self.attempts = 0
        self._clock = clock
        self._task: asyncio.Future[TokenProxy] | None = None
        self._started = 0.0

    def start(self) -> None:
        if self._task is None and self.configured.needs_sni:
            self.attempts += 1
            self._started = self._clock()
            self._task = asyncio.ensure_future(with_computed_sni(self.configured))

    async def ready(self) -> TokenProxy:
        if self._task is not None and self._retry_due():
            self._task = None
        self.start()
        if self._task is not None:
            self.current = await asyncio.shield(self._task)
        return self.current

    def _retry_due(self) -> bool:
        assert self._task is not None
        if not self._task.done() or self._task.cancelled():
            return False
        unreachable = self._task.result().problem_kind is Kind.UNAVAILABLE
        return unreachable and self._clock() - self._started >= RETRY_UNREACHABLE

    def close(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()


def _url_problem(url: str) -> str:
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018  (raises on a bad port)
    except ValueError:
        return f"--token-proxy-url {shown(url)} is not a URL"
    rule = ""
    if parts.scheme != "https":
        rule = "must use the https scheme"
    elif not parts.hostname:
        rule = "must name a host"
    elif len(parts.hostname) > 253 or any(len(x) > 63 for x in parts.hostname.split(".")):
        rule = "must name a valid host (labels of at most 63, at most 253 characters)"
    elif parts.username is not None or parts.password is not None:
        rule = "must not contain user info"
    elif parts.query:
        rule = "must not contain a query"
    elif parts.fragment:
        rule = "must not contain a fragment"
    return f"--token-proxy-url {shown(url)} {rule}" if rule else ""


class ProxyTransport(LeanTransport):
    """An azure-core transport that sends each request to the proxy, with its SNI name (the
    proxy is in-cluster: never through an HTTP proxy)."""

    def __init__(self, proxy: TokenProxy, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.proxy = proxy
        self._ca: tuple[int, int] | None = None
        self._ssl: ssl.SSLContext | None = None

    async def send(self, request: Any, **config: Any) -> Any:
        request.url = self.proxy.target(request.url)
        config.setdefault("server_hostname", self.proxy.sni_name)
        config.setdefault("ssl", self._context())
        return await super().send(request, **config)

    def _context(self) -> ssl.SSLContext:
        """The cluster CA when its file exists (rebuilt when it changes), else system roots."""
        try:
            st = os.stat(self.proxy.ca_file)
        except OSError:
            st = None
        stamp = (st.st_mtime_ns, st.st_size) if st is not None else None
        if self._ssl is not None and stamp == self._ca:
            return self._ssl
        context = ssl.create_default_context() if st is None else self._cluster_context(st.st_size)
        if context is None:  # an empty CA file mid-rotation: keep the one we have, if any
            if self._ssl is not None:
                return self._ssl
            raise ProviderError(
                Kind.UNAVAILABLE,
                f"useAzureTokenProxy: CA file {self.proxy.ca_file} is empty",
                reason="token proxy CA",
            )
        self._ssl, self._ca = context, stamp
        return context

    def _cluster_context(self, size: int) -> ssl.SSLContext | None:
        if size > MAX_CA_FILE:
            raise ProviderError(
                Kind.FAILED_PRECONDITION,
                f"useAzureTokenProxy: CA file {self.proxy.ca_file} has {size} bytes, "
                f"at most {MAX_CA_FILE}",
                reason="token proxy CA",
            )
        with open(self.proxy.ca_file, encoding="ascii", errors="replace") as f:
            pem = f.read()
        if not pem.strip():
            return None
        try:
            return ssl.create_default_context(cadata=pem)
        except ssl.SSLError:
            raise ProviderError(
                Kind.FAILED_PRECONDITION,
                f"useAzureTokenProxy: CA file {self.proxy.ca_file} holds no valid certificate",
                reason="token proxy CA",
            ) from None
