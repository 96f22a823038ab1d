"""The HTTP(S) front: one TLS listener routed by Host (Entra ID authority hosts, vault hosts,
the admin API on localhost) and a plain-HTTP IMDS listener; faults, latency and the request
log wrap every answer."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

from aiohttp import web

from . import admin, entra, imds, token_proxy, vault_certificates, vault_keys, vault_secrets
from .authz import allowed, forbidden
from .entra import EntraContext
from .errors import EntraError, ImdsError, KeyVaultError, json_response
from .faults import FaultRule
from .imds import ImdsContext
from .routing import Route, Router
from .services import Services
from .store import Store
from .tls import Pki
from .vault_common import KvContext, authenticate

log = logging.getLogger("keyvault_emulator")

ADMIN_HOSTS = {"localhost", "127.0.0.1", "::1", "[::1]"}
KV_FAULT_CODES = {
    400: "BadParameter",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    409: "Conflict",
    429: "Throttled",
    500: "InternalServerError",
    502: "BadGateway",
    503: "ServiceUnavailable",
    504: "GatewayTimeout",
}


def _host(request: web.Request) -> str:
    host = (request.host or "").lower()
    if host.startswith("["):
        return host.split("]")[0] + "]"
    return host.split(":")[0]


def _unverified_appid(header: str | None) -> str:
    """The token's appid for fault matching and the log; never trusted for access."""
    if not header or " " not in header:
        return ""
    parts = header.split(" ", 1)[1].strip().split(".")
    if len(parts) != 3:
        return ""
    try:
        claims = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
        return str(claims.get("appid", "")) if isinstance(claims, dict) else ""
    except ValueError:
        return ""


def _record(
    services: Services,
    service: str,
    method: str,
    path: str,
    route: str,
    vault: str,
    identity: str,
    status: int,
    fault: int | None,
) -> None:
    """Into the request log and counters; a debug log line too (never a body or a token)."""
    services.requests.record(service, method, path, route, vault, identity, status, fault)
    if log.isEnabledFor(logging.DEBUG):
        log.debug(
            "request",
            extra={
                "service": service,
                "method": method,
                "path": path,
                "vault": vault,
                "identity": identity,
                "status": status,
                "fault": fault,
            },
        )


class Frontend:
    """Routes each request to its service's handlers, which get the `Services` (never this)."""

    def __init__(
        self,
        store: Store,
        pki: Pki,
        latency_ms: int = 0,
        on_change: Callable[[], None] | None = None,
    ) -> None:
        self.services = Services.create(store, pki, latency_ms, on_change)
        self.store = store
        self.kv_router: Router[KvContext] = Router()
        for module in (vault_secrets, vault_keys, vault_certificates):
            module.register(self.kv_router)
        self.entra_router: Router[EntraContext] = Router()
        entra.register(self.entra_router)
        self.proxy_router: Router[EntraContext] = Router()
        token_proxy.register(self.proxy_router)
        self.imds_router: Router[ImdsContext] = Router()
        imds.register(self.imds_router)
        self.admin_router: Router[admin.AdminContext] = Router()
        admin.register(self.admin_router)

    # --- front doors ---------------------------------------------------------------------

    async def handle(self, request: web.Request) -> web.StreamResponse:
        host = _host(request)
        if host in ADMIN_HOSTS:
            return await self._admin(request)
        if host in self.store.authority_hosts():
            return await self._entra(request)
        if (
            "." in host and host.split(".", 1)[1].startswith("vault.")
        ) or self.store.cloud_for_vault_host(host):
            return await self._kv(request, host)
        return json_response(
            {"error": {"code": "NotFound", "message": f"The emulator does not serve host {host}."}},
            status=404,
        )

    async def handle_token_proxy(self, request: web.Request) -> web.StreamResponse:
        """The identity-binding token proxy's listener: every request is for it, whatever its
        Host header (clients keep Entra ID's host there and only change where they connect)."""
        return await self._entra(request, self.proxy_router, "token-proxy")

    async def handle_imds(self, request: web.Request) -> web.StreamResponse:
        async def serve(named: Callable[[str], None]) -> web.StreamResponse:
            route, params, other = self.imds_router.resolve(request.method, request.path)
            if route is None:
                return json_response(
                    {"error": "not_found", "error_description": "Not found"},
                    status=405 if other else 404,
                )
            named(route.template)
            try:
                return await route.handler(ImdsContext(request, self.services, params))
            except ImdsError as exc:
                return exc.response()

        identity = imds.identity_of(self.store, dict(request.query))
        return await self._observed("imds", request, "", identity, serve, latency=False)

    async def _observed(
        self,
        service: str,
        request: web.Request,
        vault: str,
        identity: str,
        serve: Callable[[Callable[[str], None]], Awaitable[web.StreamResponse]],
        *,
        latency: bool = True,
    ) -> web.StreamResponse:
        """One request to `service`: an injected fault if one matches, else the configured
        latency and `serve`; recorded in the request log either way (`serve` names the route
        it matched through the callback it is given)."""
        status, route_name, fault_id = 500, ["?"], None
        try:
            fault = self.services.faults.take(
                service, request.method, request.path, vault, identity
            )
            if fault is not None:
                fault_id = fault.id
                status = 0  # logged for a dropped connection; any answer overwrites it
                resp = await self._apply_fault(request, fault, service)
                if resp is not None:
                    status = resp.status
                    return resp
            if latency and self.services.latency_ms:
                await asyncio.sleep(self.services.latency_ms / 1000)
            resp = await serve(lambda name: route_name.__setitem__(0, name))
            status = resp.status
            return resp
        finally:
            _record(
                self.services,
                service,
                request.method,
                request.path,
                route_name[0],
                vault,
                identity,
                status,
                fault_id,
            )

    # --- services ------------------------------------------------------------------------

    async def _admin(self, request: web.Request) -> web.StreamResponse:
        route, params, other = self.admin_router.resolve(request.method, request.path)
        if route is None:
            return json_response(
                {"error": "not found" if not other else "method not allowed"},
                status=405 if other else 404,
            )
        if request.remote not in ("127.0.0.1", "::1"):
            # --host 0.0.0.0 must not open the admin API to other machines
            return json_response({"error": "the admin API answers loopback only"}, status=403)
        try:
            return await route.handler(admin.AdminContext(request, self.services, params))
        except KeyVaultError as exc:  # a Key Vault limit, answered as the data plane does
            return exc.response()
        except (ValueError, KeyError, TypeError) as exc:
            return json_response({"error": str(exc)}, status=400)

    async def _entra(
        self,
        request: web.Request,
        router: Router[EntraContext] | None = None,
        service: str = "entra",
    ) -> web.StreamResponse:
        router = router or self.entra_router

        async def serve(named: Callable[[str], None]) -> web.StreamResponse:
            route, params, other = router.resolve(request.method, request.path)
            if route is None:
                return json_response(
                    {"error": "invalid_request", "error_description": "Unknown endpoint."},
                    status=405 if other else 404,
                )
            named(route.template)
            try:
                return await route.handler(EntraContext(request, self.services, params))
            except EntraError as exc:
                return exc.response()

        identity = ""
        if request.method == "POST":
            form = await request.post()
            identity = str(form.get("client_id", ""))
        return await self._observed(service, request, "", identity, serve)

    async def _kv(self, request: web.Request, host: str) -> web.StreamResponse:
        vault_name = host.split(".", 1)[0]

        async def serve(named: Callable[[str], None]) -> web.StreamResponse:
            route, params, other = self.kv_router.resolve(request.method, request.path)
            if route is not None:
                named(route.template)
            try:
                self.services.throttle.check(vault_name)
                resp = await self._kv_dispatch(request, host, vault_name, route, params, other)
            except KeyVaultError as exc:
                resp = exc.response()
            resp.headers["x-ms-request-id"] = str(uuid.uuid4())
            resp.headers["x-ms-keyvault-service-version"] = "1.9.0.0"
            resp.headers["x-ms-keyvault-region"] = "emulator"
            resp.headers["Cache-Control"] = "no-cache"
            return resp

        auth_header = request.headers.get("Authorization")
        token = auth_header.split(" ", 1)[1].strip() if auth_header and " " in auth_header else ""
        cached = self.services.authority.cached_caller(token) if token else None
        identity = cached.client_id if cached else _unverified_appid(auth_header)
        return await self._observed("kv", request, vault_name, identity, serve)

    async def _kv_dispatch(
        self,
        request: web.Request,
        host: str,
        vault_name: str,
        route: Route[KvContext] | None,
        params: dict[str, str],
        other: bool,
    ) -> web.StreamResponse:
        vault = self.store.vaults.get(vault_name)
        if vault is None:
            raise KeyVaultError(
                404, "VaultNotFound", f"The vault '{vault_name}' does not exist in this emulator."
            )
        caller = authenticate(
            self.store,
            self.services.authority,
            vault,
            request.host,
            request.headers.get("Authorization"),
        )
        if route is None:
            if other:
                raise KeyVaultError(
                    405, "MethodNotAllowed", f"The method {request.method} is not allowed."
                )
            raise KeyVaultError(
                404, "NotFound", f"The path {request.path} is not a Key Vault operation."
            )
        name = params.get("name", "")
        scope = f"/{route.kind}/{name}" if route.kind and name else "/"
        if not allowed(vault, caller.object_id, route.action, scope):
            ident = self.store.identities.get(caller.client_id)
            raise forbidden(vault, ident, caller.client_id, route.action, scope)
        ctx = KvContext(
            request=request,
            services=self.services,
            vault=vault,
            base=f"https://{request.host.lower().removesuffix(':443')}",
            params=params,
            caller=caller,
            identity=self.store.identities.get(caller.client_id),
        )
        resp: web.StreamResponse = await route.handler(ctx)
        return resp

    async def _apply_fault(
        self, request: web.Request, rule: FaultRule, service: str
    ) -> web.StreamResponse | None:
        if rule.delay_ms:
            await asyncio.sleep(rule.delay_ms / 1000)
        if rule.drop:
            if request.transport is not None:
                request.transport.abort()
            raise asyncio.CancelledError
        if rule.status is None:
            return None
        headers = {}
        if rule.retry_after is not None:
            headers["Retry-After"] = str(rule.retry_after)
        if rule.body is not None:
            body = rule.body
        elif service == "kv":
            code = KV_FAULT_CODES.get(rule.status, "InternalServerError")
            body = {"error": {"code": code, "message": f"Injected fault {rule.id}: {code}."}}
        elif service in ("entra", "token-proxy"):
            body = {
                "error": "temporarily_unavailable" if rule.status >= 500 else "invalid_request",
                "error_description": f"AADSTS90033: Injected fault {rule.id}.",
                "error_codes": [90033],
            }
        else:
            body = {"error": "fault", "error_description": f"Injected fault {rule.id}."}
        return json_response(body, status=rule.status, headers=headers)


def make_app(frontend: Frontend) -> web.Application:
    app = web.Application(client_max_size=4 * 1024 * 1024)
    app.router.add_route("*", "/{tail:.*}", frontend.handle)
    return app


def make_token_proxy_app(frontend: Frontend) -> web.Application:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", frontend.handle_token_proxy)
    return app


def make_imds_app(frontend: Frontend) -> web.Application:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", frontend.handle_imds)
    return app


def state_files(state_dir: Path) -> dict[str, str]:
    return {
        "ca": str(state_dir / "ca.pem"),
        "cert": str(state_dir / "server.pem"),
        "signing_key": str(state_dir / "entra-signing-key.pem"),
    }
