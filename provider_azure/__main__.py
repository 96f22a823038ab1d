"""`python -m provider_azure`: upstream's flags, the gRPC socket, health and metrics ports."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import logging
import os
import signal
import stat
import sys
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

from . import __version__, clouds, flags, logs, trust
from .errors import ProviderError

if TYPE_CHECKING:
    import grpc

    from .server import Backend

log = logging.getLogger("provider_azure")

FLAGS = [
    flags.Flag("version", bool, False, "prints the version information"),
    flags.Flag("endpoint", str, "unix:///tmp/azure.sock", "CSI gRPC endpoint"),
    flags.Flag("log-format-json", bool, False, "set log formatter to json"),
    flags.Flag("enable-pprof", bool, False, "accepted for compatibility; no effect"),
    flags.Flag("pprof-port", int, 6060, "accepted for compatibility; no effect"),
    flags.Flag("healthz-port", int, 8989, "port for health check"),
    flags.Flag("healthz-path", str, "/healthz", "path for health check"),
    flags.Flag("healthz-timeout", float, 5.0, "RPC timeout for health check", duration=True),
    flags.Flag("metrics-backend", str, "Prometheus", "Backend used for metrics"),
    flags.Flag("prometheus-port", int, 8898, "Prometheus port for metrics backend"),
    flags.Flag(
        "construct-pem-chain",
        bool,
        True,
        "explicitly reconstruct the pem chain in the order: SERVER, INTERMEDIATE, ROOT",
    ),
    flags.Flag(
        "write-cert-and-key-in-separate-files",
        bool,
        False,
        "also write <name>.crt and <name>.key for certificate secrets",
    ),
    flags.Flag("cloud-name", str, "AzurePublicCloud", "default cloud environment"),
    flags.Flag("custom-user-agent", str, "", "accepted for compatibility; no effect"),
    flags.Flag(
        "token-proxy-url",
        str,
        "",
        "identity binding token proxy URL (default https://kubernetes.default.svc.cluster.local)",
    ),
    flags.Flag(
        "sni-name",
        str,
        "",
        "TLS server name of the identity binding token proxy (default: computed at start "
        "from the API server's certificate)",
    ),
    flags.Flag(
        "keyvault-timeout",
        float,
        30.0,
        "deadline for one Key Vault operation, retries included (not upstream)",
        duration=True,
    ),
    # klog's flags, as upstream registers them.
    flags.Flag("v", int, 0, "number for the log level verbosity"),
    flags.Flag("vmodule", str, "", "klog vmodule (ignored)"),
    flags.Flag("logtostderr", bool, True, "klog (ignored)"),
    flags.Flag("alsologtostderr", bool, False, "klog (ignored)"),
    flags.Flag("add_dir_header", bool, False, "klog (ignored)"),
    flags.Flag("skip_headers", bool, False, "klog (ignored)"),
    flags.Flag("skip_log_headers", bool, False, "klog (ignored)"),
    flags.Flag("one_output", bool, False, "klog (ignored)"),
    flags.Flag("log_dir", str, "", "klog (ignored)"),
    flags.Flag("log_file", str, "", "klog (ignored)"),
    flags.Flag("log_file_max_size", int, 1800, "klog (ignored)"),
    flags.Flag("stderrthreshold", str, "2", "klog (ignored)"),
    flags.Flag("log_backtrace_at", str, "", "klog (ignored)"),
]


def parse_endpoint(endpoint: str) -> tuple[str, str]:
    lower = endpoint.lower()
    if lower.startswith("unix://") or lower.startswith("tcp://"):
        scheme, _, rest = endpoint.partition("://")
        if rest:
            return scheme.lower(), rest
    raise ValueError(f"invalid endpoint: {endpoint}")


def remove_stale_socket(path: str) -> None:
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if stat.S_ISDIR(mode):
        raise OSError(f"endpoint {path} is a directory")
    os.remove(path)


async def serve(opts: dict[str, Any]) -> int:
    """Serve the socket (Version, health) at once; load what Mount needs in a worker thread."""
    import grpc

    from secrets_store_api import provider_pb2_grpc

    from .server import ProviderServicer, health_handler

    scheme, address = parse_endpoint(opts["endpoint"])
    if opts["metrics-backend"].lower() != "prometheus":
        log.error("unsupported metrics backend", extra={"backend": opts["metrics-backend"]})
        return 1
    default_cloud = clouds.from_name(opts["cloud-name"])
    loading: asyncio.Future[Backend] = asyncio.get_running_loop().create_future()
    server = grpc.aio.server()
    provider_pb2_grpc.add_CSIDriverProviderServicer_to_server(
        ProviderServicer(loading=loading), server
    )
    server.add_generic_rpc_handlers((health_handler(),))
    socket_path = await _listen(server, scheme, address)
    log.info("Listening for connections", extra={"address": opts["endpoint"]})
    http = await _serve_http(opts, socket_path, loading)
    loader = asyncio.ensure_future(_load(opts, default_cloud, loading))
    code = await _until_stopped(loader)
    await server.stop(grace=10)
    for site in http:
        site.close()
    if loading.done() and not loading.exception():
        await loading.result()[0].close()
    if socket_path:
        with contextlib.suppress(FileNotFoundError):
            os.remove(socket_path)
    return code


async def _until_stopped(loader: asyncio.Future[None]) -> int:
    """0 at SIGTERM/SIGINT; 1 when loading what Mount needs failed."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    stopping = asyncio.ensure_future(stop.wait())
    await asyncio.wait((stopping, loader), return_when=asyncio.FIRST_COMPLETED)
    if loader.done() and loader.exception() is not None:
        log.error("failed to load the provider", extra={"error": str(loader.exception())})
        return 1
    await stopping
    log.info("terminating the server")
    loader.cancel()
    return 0


async def _load(
    opts: dict[str, Any], default_cloud: clouds.CloudEnvironment, loading: asyncio.Future[Backend]
) -> None:
    """Import the SDKs off the event loop, then build the provider and its metrics."""
    try:
        await asyncio.to_thread(importlib.import_module, f"{__package__}.provider")
        from prometheus_client import disable_created_metrics

        from .auth import ClientCache
        from .fetch import ContentOptions
        from .keyvault import ClientOptions
        from .metrics import Metrics
        from .provider import Provider

        disable_created_metrics()  # type: ignore[no-untyped-call]  # upstream exports no *_created
        metrics = Metrics()
        content = ContentOptions(
            construct_pem_chain=opts["construct-pem-chain"],
            write_cert_and_key_in_separate_files=opts["write-cert-and-key-in-separate-files"],
        )
        from .token_proxy import configure

        token_proxy = configure(opts["token-proxy-url"], opts["sni-name"])
        if token_proxy.problem:
            log.warning("identity binding unavailable", extra={"error": token_proxy.problem})
        clients = ClientCache(
            ClientOptions(timeout=opts["keyvault-timeout"]), token_proxy=token_proxy
        )
        clients.compute_sni()
        loading.set_result((Provider(content, default_cloud, metrics, clients), metrics))
        log.info("ready to mount")
    except BaseException as exc:
        if not loading.done():
            loading.set_exception(exc)
        raise


async def _listen(server: grpc.aio.Server, scheme: str, address: str) -> str:
    """Start serving; the unix socket's path ("" for TCP), created owner-only (umask 0077)."""
    if scheme != "unix":
        server.add_insecure_port(address)
        await server.start()
        return ""
    remove_stale_socket(address)
    old = os.umask(0o077)
    try:
        server.add_insecure_port(f"unix://{address}")
        await server.start()
    finally:
        os.umask(old)
    return address


async def _serve_http(
    opts: dict[str, Any], socket_path: str, loading: asyncio.Future[Backend]
) -> list[asyncio.Server]:
    from . import endpoints
    from .server import check_health

    async def healthz() -> endpoints.Answer:
        try:
            await check_health(socket_path, opts["healthz-timeout"])
        except Exception as exc:  # any failure is "unhealthy"
            return 503, "text/plain; charset=utf-8", f"{type(exc).__name__}\n".encode()
        return 200, "text/plain; charset=utf-8", b"ok"

    async def metrics() -> endpoints.Answer:
        # While the SDKs load there is nothing to count yet: an empty exposition, not a failed
        # scrape (which would read as the provider being down).
        if not loading.done() or loading.exception() is not None:
            return 200, "text/plain; charset=utf-8", b""
        return 200, "text/plain; charset=utf-8", loading.result()[1].exposition()

    return [
        await endpoints.serve({"/metrics": metrics}, opts["prometheus-port"]),
        await endpoints.serve({opts["healthz-path"]: healthz}, opts["healthz-port"]),
    ]


def _run(coro: Coroutine[Any, Any, int]) -> int:
    """uvloop when installed: it roughly halves the event loop's share of a mount's CPU."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    try:
        opts, _ = flags.parse(FLAGS, args)
    except flags.FlagError as exc:
        print(f"{exc}\n{flags.usage(FLAGS, 'secrets-store-provider-azure')}", file=sys.stderr)
        raise SystemExit(0 if str(exc) == "help requested" else 2) from None
    logs.setup(opts["log-format-json"], opts["v"])
    if opts["version"]:
        print(json.dumps({"version": __version__, "buildDate": ""}, separators=(",", ":")))
        raise SystemExit(0)
    log.info("Starting Azure Key Vault Provider", extra={"version": __version__})
    bundle = trust.settle(os.environ)
    if bundle is not None:
        log.info("reading the mounted CA bundle", extra={"SSL_CERT_FILE": str(bundle)})
    try:
        code = _run(serve(opts))
    except (ValueError, OSError, ProviderError) as exc:
        log.error("failed to start", extra={"error": str(exc)})
        code = 1
    raise SystemExit(code)


if __name__ == "__main__":
    main()
