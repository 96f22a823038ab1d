"""`keyvault-emulator serve|seed`: run the emulator, or seed a running one."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import ssl
import sys
import time
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from aiohttp import web

    from .persist import Persister
    from .store import Store
    from .tls import Pki

log = logging.getLogger("keyvault_emulator")

# The shape of the names AKS computes (a<base32 of a hash>.ests.aks); any name works.
DEFAULT_TOKEN_PROXY_SNI = "aemulator.ests.aks"


class JsonFormatter(logging.Formatter):
    """One JSON object a line; extra fields ride along. Never given secrets or tokens."""

    RESERVED = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message"}

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(record.created)),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        out.update({k: v for k, v in vars(record).items() if k not in self.RESERVED})
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def _setup_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="keyvault-emulator", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("serve", help="run the emulator")
    s.add_argument("--host", default="127.0.0.1", help="HTTPS listen address")
    s.add_argument("--port", type=int, default=443, help="HTTPS port (Key Vault, Entra ID, admin)")
    s.add_argument("--imds-host", default="169.254.169.254", help="IMDS listen address")
    s.add_argument("--imds-port", type=int, default=80, help="IMDS port; 0 disables IMDS")
    s.add_argument(
        "--state-dir",
        type=Path,
        default=Path(".keyvault-emulator"),
        help="CA, server certificate and signing key (created if missing)",
    )
    s.add_argument("--seed", type=Path, action="append", default=[], help="seed YAML (repeatable)")
    s.add_argument(
        "--latency-ms",
        type=int,
        default=0,
        help="sleep added to every Key Vault and Entra ID answer",
    )
    s.add_argument(
        "--throttle",
        type=int,
        default=0,
        metavar="N",
        help="429 Throttled past N requests per vault per 10 s (Key Vault: 4000); 0: off",
    )
    s.add_argument("--persist", type=Path, help="save state to this file and load it at start")
    s.add_argument(
        "--extra-san",
        action="append",
        default=[],
        help="another name (or IP) for the server certificate (repeatable)",
    )
    s.add_argument(
        "--token-proxy-port",
        type=int,
        default=0,
        help="AKS identity-binding token proxy (HTTPS on --host); 0: off",
    )
    s.add_argument(
        "--token-proxy-sni",
        default=DEFAULT_TOKEN_PROXY_SNI,
        help="the only name the token proxy's certificate carries (clients' --sni-name)",
    )
    s.add_argument(
        "--token-proxy-apiserver-san",
        action="append",
        default=[],
        metavar="NAME",
        help="serve the token proxy's port as the AKS API server endpoint does: clients that "
        "do not name --token-proxy-sni get a certificate for these names (repeatable; e.g. "
        "kubernetes.default.svc.cluster.local and hcp-kubernetes.<id>.svc.cluster.local)",
    )
    s.add_argument("--log-level", default="info")
    d = sub.add_parser("seed", help="send a seed file to a running emulator")
    d.add_argument("files", type=Path, nargs="+")
    d.add_argument("--admin-url", default="https://127.0.0.1:443")
    d.add_argument("--ca", type=Path, default=Path(".keyvault-emulator/ca.pem"))
    return p


async def serve(args: argparse.Namespace) -> int:
    # Imported here so that `keyvault-emulator seed` starts fast.
    from .server import Frontend, make_app, make_imds_app, make_token_proxy_app
    from .tls import ensure_pki

    pki = ensure_pki(args.state_dir, args.extra_san)
    loaded = _load_store(args)
    if loaded is None:
        return 2
    store, persister = loaded
    frontend = Frontend(
        store, pki, args.latency_ms, on_change=persister.schedule(store) if persister else None
    )
    if args.throttle:
        frontend.services.throttle.configure(args.throttle, 10.0)
    runners = await _listen(args, make_app(frontend), make_imds_app(frontend), pki)
    if runners is None:
        return 1
    if args.token_proxy_port:
        proxy = await _listen_token_proxy(args, make_token_proxy_app(frontend))
        if proxy is None:
            for runner in runners:
                await runner.cleanup()
            return 1
        runners.append(proxy)
    log.info(
        "ready",
        extra={
            "https": f"{args.host}:{args.port}",
            "imds": f"{args.imds_host}:{args.imds_port}" if args.imds_port else None,
            "token_proxy": (
                f"{args.host}:{args.token_proxy_port} (SNI {args.token_proxy_sni})"
                if args.token_proxy_port
                else None
            ),
            "ca": str(pki.ca_path),
            "vaults": sorted(store.vaults),
            "latency_ms": args.latency_ms,
        },
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    if persister:
        persister.save(store)
    for runner in runners:
        await runner.cleanup()
    return 0


def _load_store(args: argparse.Namespace) -> tuple[Store, Persister | None] | None:
    """The saved state (--persist), else the seeds; None when a seed is refused (logged)."""
    from . import seed as seeding
    from .store import Store

    store = Store()
    persister = None
    if args.persist is not None:
        from .persist import Persister

        persister = Persister(args.persist)
    if persister and persister.load(store):
        return store, persister
    for path in args.seed:
        try:
            seeding.apply(store, seeding.load_file(path), base=path.parent)
        except (seeding.SeedError, OSError) as exc:
            log.error("seed rejected", extra={"seed": str(path), "error": str(exc)})
            return None
    return store, persister


async def _listen(
    args: argparse.Namespace, app: web.Application, imds_app: web.Application, pki: Pki
) -> list[web.AppRunner] | None:
    """The HTTPS listener, and the IMDS one unless --imds-port 0; None (logged) when either
    address cannot be bound."""
    from aiohttp import web

    from .tls import server_ssl_context

    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(
        runner, args.host, args.port, ssl_context=server_ssl_context(pki), backlog=1024
    )
    try:
        await site.start()
    except OSError as exc:
        log.error("cannot listen", extra={"address": f"{args.host}:{args.port}", "error": str(exc)})
        await runner.cleanup()
        return None
    if not args.imds_port:
        return [runner]
    imds_runner = web.AppRunner(imds_app, access_log=None, handle_signals=False)
    await imds_runner.setup()
    try:
        await web.TCPSite(imds_runner, args.imds_host, args.imds_port).start()
    except OSError as exc:
        log.error(
            "cannot listen for IMDS (add the address to lo, run inside tests/netns-run, "
            "or pass --imds-port 0)",
            extra={"address": f"{args.imds_host}:{args.imds_port}", "error": str(exc)},
        )
        await runner.cleanup()
        await imds_runner.cleanup()
        return None
    return [runner, imds_runner]


async def _listen_token_proxy(
    args: argparse.Namespace, app: web.Application
) -> web.AppRunner | None:
    from aiohttp import web

    from .tls import token_proxy_ssl_context

    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    ctx = token_proxy_ssl_context(
        args.state_dir, args.token_proxy_sni, args.token_proxy_apiserver_san
    )
    try:
        await web.TCPSite(runner, args.host, args.token_proxy_port, ssl_context=ctx).start()
    except OSError as exc:
        where = {"address": f"{args.host}:{args.token_proxy_port}", "error": str(exc)}
        log.error("cannot listen for the token proxy", extra=where)
        await runner.cleanup()
        return None
    return runner


def send_seed(args: argparse.Namespace) -> int:
    if not args.admin_url.startswith("https://"):
        print(f"--admin-url must be an https:// URL, not {args.admin_url[:60]!r}", file=sys.stderr)
        return 2
    ctx = ssl.create_default_context(cafile=str(args.ca))
    for path in args.files:
        req = urllib.request.Request(  # noqa: S310  https only (checked above)
            args.admin_url.rstrip("/") + "/_emulator/seed",
            data=path.read_bytes(),
            method="POST",
            headers={"Content-Type": "application/yaml"},
        )
        with urllib.request.urlopen(req, context=ctx, timeout=30) as resp:  # noqa: S310
            print(resp.read().decode())
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.command == "serve":
        _setup_logging(args.log_level)
        return asyncio.run(serve(args))
    return send_seed(args)


if __name__ == "__main__":
    sys.exit(main())
