"""Start and drive an emulator from tests, benchmarks and demos (plain Python, no pytest needed).

    emu = Emulator.start(state_dir, seeds=[DEFAULT_SEED])
    os.environ["SSL_CERT_FILE"] = str(emu.ca_path)
    ...
    emu.stop()

It runs `python -m keyvault_emulator serve` as a subprocess and talks to its admin API over
HTTPS on 127.0.0.1; it sets nothing global.
"""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import jwt
import yaml

from testbed import REPO
from testbed.process import terminate

# --- the default test seed (tests/emulator/seed.yaml) ---------------------------------------
TENANT_ID = "6b1f3c5e-7a2d-4e8f-9c0b-1d2e3f4a5b6c"
OTHER_TENANT_ID = "9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d"
AUTHORITY_HOST = "login.microsoftonline.com"
CUSTOM_AUTHORITY_HOST = "login.custom-cloud.test"
CUSTOM_VAULT_SUFFIX = "vault.custom-cloud.test"

SP_OFFICER_ID, SP_OFFICER_SECRET = "0a000001-0000-4000-8000-000000000001", "officer-secret"
SP_READER_ID, SP_READER_SECRET = "0a000002-0000-4000-8000-000000000002", "reader-secret"
SP_NOROLE_ID, SP_NOROLE_SECRET = "0a000003-0000-4000-8000-000000000003", "norole-secret"
SP_OTHER_TENANT_ID, SP_OTHER_TENANT_SECRET = "0a000004-0000-4000-8000-000000000004", "other-secret"
MI_SYSTEM_CLIENT_ID = "0a000011-0000-4000-8000-000000000011"
MI_SYSTEM_OBJECT_ID = "0b000011-0000-4000-8000-000000000011"
MI_USER_CLIENT_ID = "0a000012-0000-4000-8000-000000000012"
MI_USER_OBJECT_ID = "0b000012-0000-4000-8000-000000000012"
MI_USER_RESOURCE_ID = (
    "/subscriptions/00000000-0000-0000-0000-000000000000/resourcegroups/emulator/providers/"
    "Microsoft.ManagedIdentity/userAssignedIdentities/mi-user"
)
WI_APP_CLIENT_ID = "0a000021-0000-4000-8000-000000000021"
WI_ISSUER = "https://oidc.emulator.test"
WI_SUBJECT = "system:serviceaccount:default:workload"
WI_AUDIENCE = "api://AzureADTokenExchange"
WI_KEY_ID = "wi-test-key"

# The identity-binding token proxy of the session emulator (tests/conftest.py).
TOKEN_PROXY_PORT = 8643
# Its port is also an AKS-like API server endpoint (--token-proxy-apiserver-san): a client that
# does not name the proxy's SNI gets a certificate for kubernetes.default.svc.cluster.local and
# hcp-kubernetes.<TEST_CLUSTER_ID>.svc.cluster.local, and the proxy's SNI name is the one that
# id gives. The name was computed apart from the product, by coreutils:
#   printf identity-binding$ID | openssl dgst -sha256 -binary | basenc --base32hex
# (padding dropped, lower case, `a` before and `.ests.aks` after).
TEST_CLUSTER_ID = "emulator-cluster-0"
TOKEN_PROXY_SNI = "aa7mb1l8iugbmt4rkp3h7uv1kbnp3a6rilaoa5i7fuc10h1ftqjug.ests.aks"
API_SERVER_HOST = "kubernetes.default.svc.cluster.local"
TOKEN_PROXY_APISERVER_SANS = (
    API_SERVER_HOST,
    f"hcp-kubernetes.{TEST_CLUSTER_ID}.svc.cluster.local",
)
TOKEN_PROXY_URL = f"https://127.0.0.1:{TOKEN_PROXY_PORT}"
IDENTITY_BINDING_AUDIENCE = "api://AKSIdentityBinding"

DEFAULT_SEED = REPO / "tests" / "emulator" / "seed.yaml"
WI_ISSUER_KEY = REPO / "tests" / "emulator" / "fixtures" / "wi-issuer-key.pem"


def vault_url(vault: str, suffix: str = "vault.azure.net") -> str:
    return f"https://{vault}.{suffix}/"


def workload_token(
    subject: str = WI_SUBJECT,
    issuer: str = WI_ISSUER,
    audience: str = WI_AUDIENCE,
    lifetime: int = 3600,
    key_pem: bytes | None = None,
    kid: str = WI_KEY_ID,
    extra: Mapping[str, Any] | None = None,
) -> str:
    """A Kubernetes-style service-account JWT signed by the test issuer's key (the one the
    default seed registers), for ClientAssertionCredential / workload identity."""
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": issuer,
        "sub": subject,
        "aud": [audience],
        "iat": now,
        "nbf": now,
        "exp": now + lifetime,
        "kubernetes.io": {"namespace": "default", "serviceaccount": {"name": "workload"}},
    }
    claims.update(extra or {})
    key = key_pem if key_pem is not None else WI_ISSUER_KEY.read_bytes()
    return jwt.encode(claims, key, algorithm="RS256", headers={"kid": kid})


class EmulatorError(RuntimeError):
    pass


class Emulator:
    """A running emulator subprocess and a client for its admin API."""

    def __init__(self, proc: subprocess.Popen[bytes], state_dir: Path, port: int, log_path: Path):
        self.proc = proc
        self.state_dir = state_dir
        self.port = port
        self.log_path = log_path
        self.ca_path = state_dir / "ca.pem"
        self.admin_url = f"https://127.0.0.1:{port}/_emulator"
        self._ssl: ssl.SSLContext | None = None

    @classmethod
    def start(
        cls,
        state_dir: str | os.PathLike[str],
        seeds: Iterable[str | os.PathLike[str]] = (),
        latency_ms: int = 0,
        port: int = 443,
        imds_port: int = 80,
        host: str = "127.0.0.1",
        imds_host: str = "169.254.169.254",
        extra_args: Iterable[str] = (),
        timeout: float = 30.0,
    ) -> Emulator:
        state = Path(state_dir)
        state.mkdir(parents=True, exist_ok=True)
        args = [
            sys.executable,
            "-m",
            "keyvault_emulator",
            "serve",
            "--host",
            host,
            "--port",
            str(port),
            "--imds-host",
            imds_host,
            "--imds-port",
            str(imds_port),
            "--state-dir",
            str(state),
            "--latency-ms",
            str(latency_ms),
        ]
        for s in seeds:
            args += ["--seed", str(s)]
        args += list(extra_args)
        log_path = state / "emulator.log"
        log = open(log_path, "ab")  # noqa: SIM115 - the child owns it for its lifetime
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
        proc = subprocess.Popen(args, stdout=log, stderr=log, env=env, cwd=str(REPO))
        log.close()
        emu = cls(proc, state, port, log_path)
        emu._wait_healthy(timeout)
        return emu

    def _wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise EmulatorError(
                    f"emulator exited with {self.proc.returncode}: {self.log_tail()}"
                )
            try:
                # the pid tells our emulator from another one already on the port
                if (
                    self.ca_path.exists()
                    and self._call("GET", "/health").get("pid") == self.proc.pid
                ):
                    return
            except (OSError, urllib.error.URLError, ssl.SSLError, EmulatorError):
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise EmulatorError(f"emulator not healthy after {timeout}s: {self.log_tail()}")
            time.sleep(0.05)

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text().splitlines()[-lines:])
        except OSError:
            return ""

    def _context(self) -> ssl.SSLContext:
        if self._ssl is None:
            self._ssl = ssl.create_default_context(cafile=str(self.ca_path))
        return self._ssl

    def _call(self, method: str, path: str, body: Any = None, raw: bytes | None = None) -> Any:
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        req = urllib.request.Request(self.admin_url + path, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, context=self._context(), timeout=30) as resp:
                text = resp.read()
        except urllib.error.HTTPError as exc:
            raise EmulatorError(f"{method} {path}: {exc.code} {exc.read().decode()}") from None
        return json.loads(text) if text.strip() else None

    # --- admin API -----------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET", "/health")
        return result

    def seed(self, seed: Mapping[str, Any] | str) -> dict[str, Any]:
        """Merges a seed (a mapping, or YAML/JSON text) into the running emulator."""
        text = seed if isinstance(seed, str) else yaml.safe_dump(dict(seed))
        result: dict[str, Any] = self._call("POST", "/seed", raw=text.encode())
        return result

    def add_fault(self, **rule: Any) -> dict[str, Any]:
        """service (kv|entra|imds), method, path (regex), identity (client id), vault, count;
        then status (+ retry_after), delay_ms, or drop=True."""
        result: dict[str, Any] = self._call("POST", "/faults", rule)
        return result

    def faults(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._call("GET", "/faults")["faults"]
        return result

    def clear_faults(self) -> None:
        self._call("DELETE", "/faults")

    def requests(self, **filters: str) -> list[dict[str, Any]]:
        """The request log: service, method, path, route, vault, identity, status, fault."""
        query = "&".join(f"{k}={v}" for k, v in filters.items())
        result: list[dict[str, Any]] = self._call(
            "GET", "/requests" + (f"?{query}" if query else "")
        )["requests"]
        return result

    def clear_requests(self) -> None:
        """Clears the request log and the counters."""
        self._call("DELETE", "/requests")

    def counters(self) -> dict[str, Any]:
        result: dict[str, Any] = self._call("GET", "/counters")
        return result

    def set_latency(self, ms: int) -> None:
        self._call("PUT", "/latency", {"latency_ms": ms})

    def set_throttle(self, limit: int, window_seconds: float = 10.0) -> None:
        """At most `limit` requests per vault per window, then 429 Throttled; 0 turns it off."""
        self._call("PUT", "/throttle", {"limit": limit, "window_seconds": window_seconds})

    def set_secret(self, vault: str, name: str, value: str, **fields: Any) -> str:
        """Sets a secret as an operator (no auth); returns the new version id."""
        result = self._call("PUT", f"/vaults/{vault}/secrets/{name}", {"value": value, **fields})
        return str(result["version"])

    def set_secret_enabled(self, vault: str, name: str, version: str, enabled: bool) -> None:
        self._call("PATCH", f"/vaults/{vault}/secrets/{name}/{version}", {"enabled": enabled})

    def token(
        self,
        identity: str,
        resource: str = "https://vault.azure.net",
        lifetime_seconds: int | None = None,
    ) -> str:
        """An access token minted directly (no Entra round trip)."""
        body: dict[str, Any] = {"identity": identity, "resource": resource}
        if lifetime_seconds is not None:
            body["lifetime_seconds"] = lifetime_seconds
        return str(self._call("POST", "/token", body)["access_token"])

    def stop(self, timeout: float = 10.0) -> None:
        terminate(self.proc, timeout)

    def __enter__(self) -> Emulator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
