"""The identity-binding SNI name when `--sni-name` is not given, computed as upstream v1.8.2
does (internal/identitybinding): a TLS connection to the API server at
`kubernetes.default.svc.cluster.local:$KUBERNETES_SERVICE_PORT` (443 when unset), trusting only
the cluster CA file and checking the certificate against that host name, TLS 1.2 or newer, 10 s
for connect and handshake; the first DNS SAN `hcp-kubernetes.<id>.svc.cluster.local` of the
leaf gives the cluster id; the name is `a` + base32hex(sha256("identity-binding" + id)),
unpadded, then `.ests.aks`, all lower case. Host and CA path are fixed, as upstream's are; the
port comes from the environment kubelet gives every pod.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import os
import ssl

from .errors import Kind, ProviderError
from .limits import cut

API_SERVER_HOST = "kubernetes.default.svc.cluster.local"
PORT_ENV = "KUBERNETES_SERVICE_PORT"
CONNECT_TIMEOUT = 10.0
SAN_PREFIX, SAN_SUFFIX = "hcp-kubernetes.", ".svc.cluster.local"
# The cluster CA bundle (a few certificates in practice).
MAX_CA_FILE = 1024 * 1024
HINT = "use --sni-name to give the name explicitly"


def server_name(cluster_id: str) -> str:
    """The token proxy's SNI name for a cluster id."""
    digest = hashlib.sha256(("identity-binding" + cluster_id).encode()).digest()
    return ("a" + base64.b32hexencode(digest).decode().rstrip("=") + ".ests.aks").lower()


def cluster_id(dns_names: list[str]) -> str:
    """The id in the first SAN of the shape `hcp-kubernetes.<id>.svc.cluster.local`."""
    for san in dns_names:
        if san.startswith(SAN_PREFIX) and san.endswith(SAN_SUFFIX):
            found = san[len(SAN_PREFIX) : len(san) - len(SAN_SUFFIX)]
            if len(san) < len(SAN_PREFIX) + len(SAN_SUFFIX) or not found:
                raise _failed(f"empty cluster ID in the API server certificate's SAN {cut(san)}")
            return found
    raise _failed(
        f"no SAN {SAN_PREFIX}<cluster id>{SAN_SUFFIX} in the API server certificate "
        f"(it names {_names(dns_names)}); {HINT}"
    )


async def compute(ca_file: str, port: str | None = None) -> str:
    """The SNI name of this cluster's token proxy, from its API server's certificate."""
    port = (os.environ.get(PORT_ENV, "") if port is None else port) or "443"
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise _failed(f"{PORT_ENV} {cut(port)} is not a port number")
    names = await _peer_dns_names(_context(ca_file), int(port))
    return server_name(cluster_id(names))


def _context(ca_file: str) -> ssl.SSLContext:
    try:
        with open(ca_file, "rb") as f:
            pem = f.read(MAX_CA_FILE + 1)
    except OSError as exc:
        raise _failed(
            f"cannot read the cluster CA file {ca_file}: {exc.strerror}; {HINT}"
        ) from None
    if len(pem) > MAX_CA_FILE:
        raise _failed(f"the cluster CA file {ca_file} has more than {MAX_CA_FILE} bytes")
    try:
        context = ssl.create_default_context(cadata=pem.decode("ascii", errors="replace"))
    except (ssl.SSLError, ValueError):
        raise _failed(f"no valid certificate in the cluster CA file {ca_file}") from None
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


async def _peer_dns_names(context: ssl.SSLContext, port: int) -> list[str]:
    where = f"{API_SERVER_HOST}:{port}"
    try:
        async with asyncio.timeout(CONNECT_TIMEOUT):
            _, writer = await asyncio.open_connection(API_SERVER_HOST, port, ssl=context)
    except ssl.SSLCertVerificationError as exc:
        raise _failed(
            f"the API server at {where} is not trusted: {exc.verify_message} "
            "(the cluster CA file must sign a certificate for "
            f"{API_SERVER_HOST})"
        ) from None
    except TimeoutError:
        raise _unreachable(where, f"no TLS connection within {CONNECT_TIMEOUT:g} s") from None
    except (OSError, ssl.SSLError) as exc:
        raise _unreachable(where, exc.strerror or str(exc)) from None
    try:
        cert = writer.get_extra_info("peercert") or {}
        return [value for kind, value in cert.get("subjectAltName", ()) if kind == "DNS"]
    finally:
        writer.close()
        with contextlib.suppress(OSError, ssl.SSLError):
            await writer.wait_closed()


def _names(dns_names: list[str]) -> str:
    if not dns_names:
        return "no DNS name"
    shown = ", ".join(cut(n) for n in dns_names[:4])
    return shown + (f" and {len(dns_names) - 4} more" if len(dns_names) > 4 else "")


def _failed(message: str) -> ProviderError:
    return ProviderError(
        Kind.FAILED_PRECONDITION, f"cannot compute the SNI name: {message}", reason="sni name"
    )


def _unreachable(where: str, why: str) -> ProviderError:
    return ProviderError(
        Kind.UNAVAILABLE,
        f"cannot compute the SNI name: cannot reach the API server at {where}: {cut(why)}; {HINT}",
        reason="sni name",
    )
