# Over 400 lines: the three object kinds, their listings and the one SDK error mapping.
"""Key Vault clients (Azure SDK `.aio`), one set per (identity, vault), and SDK error mapping.

This is the clients layer: it turns SDK answers into plain values and SDK exceptions into
ProviderError with a kind, a message naming the object and vault, and a hint where one helps.
"""

from __future__ import annotations

import asyncio
import contextvars
import datetime
import functools
import importlib
import json
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from azure.core.credentials_async import AsyncTokenCredential
from azure.core.exceptions import (
    AzureError,
    ClientAuthenticationError,
    HttpResponseError,
    ResourceExistsError,
    ResourceNotFoundError,
    ResourceNotModifiedError,
    ServiceRequestError,
    ServiceRequestTimeoutError,
    ServiceResponseError,
    ServiceResponseTimeoutError,
)
from azure.core.pipeline import policies
from azure.core.rest import HttpRequest
from azure.keyvault.secrets import KeyVaultSecretIdentifier

# Each Key Vault package ships its own copy of the challenge policy (same behaviour).
from azure.keyvault.secrets._shared.async_challenge_auth_policy import (
    AsyncChallengeAuthPolicy as SecretChallenge,
)
from azure.keyvault.secrets.aio import SecretClient

from .errors import Kind, ProviderError, object_context
from .http_transport import env_proxies, make_transport
from .limits import MAX_LISTED_OBJECTS, MAX_LISTED_VERSIONS
from .ratelimit import TokenBucket

if TYPE_CHECKING:
    from azure.keyvault.certificates.aio import CertificateClient
    from azure.keyvault.keys.aio import KeyClient

# The key and certificate SDKs are imported when a mount first asks for a key or a certificate
# (their import is ~30 ms of CPU, 0.6 s under a 50m quota, before a first secrets-only Mount).
_KEYS = ("azure.keyvault.keys.aio", "azure.keyvault.keys._shared.async_challenge_auth_policy")
_CERTS = (
    "azure.keyvault.certificates.aio",
    "azure.keyvault.certificates._shared.async_challenge_auth_policy",
)


async def _sdk(client: str, policy: str) -> tuple[Any, Any]:
    """An SDK client module and its challenge-policy module, imported off the event loop the
    first time."""
    for name in (client, policy):
        module = sys.modules.get(name)
        # A module another mount's thread is still importing is in sys.modules half-made:
        # import_module waits for that import to finish.
        if module is None or getattr(module.__spec__, "_initializing", False):
            await asyncio.to_thread(importlib.import_module, name)
    return sys.modules[client], sys.modules[policy]


def _lean_policies(
    credential: AsyncTokenCredential, challenge: Any, kwargs: dict[str, Any], decode: bool = True
) -> list[Any]:
    """The SDK's pipeline without tracing, request-id, redirect and logging policies, which
    cost ~30% of a GET's CPU and do nothing here (we never log requests, never follow
    redirects to other hosts), nor the headers policy (it adds headers given to the client or
    per call, and we give none; each policy is a layer of coroutines on every request).

    `decode=False` leaves out the ContentDecodePolicy: the generated Key Vault operations read
    `response.json()` themselves and never the context it fills, and Get Secret (below) parses
    the body with `json.loads`, so for the secrets client it parses every answer for nobody
    (~5 % of a GET's CPU)."""
    return [
        policies.UserAgentPolicy(sdk_moniker="secrets-store-csi-provider-azure"),
        # Key Vault answers UTF-8 JSON: naming the encoding spares parsing the Content-Type
        # header with the email package on every answer (~8 % of a GET's CPU).
        *([policies.ContentDecodePolicy(response_encoding="utf-8")] if decode else []),
        policies.AsyncRetryPolicy(**kwargs),
        challenge(credential, verify_challenge_resource=True),
    ]


# What the generated Get Secret operation raises for these statuses (any other non-200 is an
# HttpResponseError); the message of each comes from the response body, not from a model.
_GET_ERRORS: dict[int, type[HttpResponseError]] = {
    401: ClientAuthenticationError,
    404: ResourceNotFoundError,
    409: ResourceExistsError,
    304: ResourceNotModifiedError,
}


@functools.lru_cache(maxsize=1024)
def _secret_version(secret_id: str) -> str:
    """The version in a secret's id, as SecretProperties.version reads it (a bounded memo: the
    same ids come back on every Mount, and the parse is a urlparse)."""
    return KeyVaultSecretIdentifier(secret_id).version or ""


EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)

# Which service one Key Vault operation is waiting on: the challenge policy asks the credential
# for a token inside the operation, so a timeout or a refused connection there is the identity
# service's (Entra ID, IMDS), not Key Vault's. Set per operation by VaultClient._call.
_WAITING_ON: contextvars.ContextVar[list[str] | None] = contextvars.ContextVar(
    "waiting_on", default=None
)


class _TracedCredential:
    """The credential as the SDK sees it: marks the running operation while a token is fetched."""

    def __init__(self, inner: AsyncTokenCredential, service: str) -> None:
        self._inner = inner
        self._service = service

    async def _traced(self, call: Any) -> Any:
        waiting = _WAITING_ON.get()
        if waiting is None:
            return await call
        previous, waiting[0] = waiting[0], self._service
        result = await call
        waiting[0] = previous
        return result

    async def get_token(self, *scopes: str, **kwargs: Any) -> Any:
        return await self._traced(self._inner.get_token(*scopes, **kwargs))

    async def get_token_info(self, *scopes: str, **kwargs: Any) -> Any:
        return await self._traced(self._inner.get_token_info(*scopes, **kwargs))  # type: ignore[attr-defined]

    async def close(self) -> None:
        return None  # the credential is shared; ClientCache closes it


ROLE_HINTS = {
    "secret": "Key Vault Secrets User (or an access policy with secret get/list)",
    "key": "Key Vault Crypto User (or an access policy with key get/list)",
    "cert": "Key Vault Certificate User (or an access policy with certificate get/list)",
}


@dataclass(frozen=True)
class SecretValue:
    value: str
    content_type: str
    kid: str
    version: str


@dataclass(frozen=True)
class KeyValue:
    kty: str
    version: str
    n: bytes | None = None
    e: bytes | None = None
    crv: str | None = None
    x: bytes | None = None
    y: bytes | None = None


@dataclass(frozen=True)
class CertificateValue:
    cer: bytes
    version: str


@dataclass(frozen=True)
class VersionInfo:
    version: str
    created: datetime.datetime


@dataclass(frozen=True)
class ObjectInfo:
    """One entry of a vault's list of secrets, keys or certificates (no value)."""

    name: str
    enabled: bool
    tags: dict[str, str]


@dataclass(frozen=True)
class ClientOptions:
    """Bounded retries (Retry-After honoured) and a deadline per Key Vault operation."""

    retry_total: int = 4
    retry_backoff_factor: float = 1.0  # 1, 2, 4, 8 s (with jitter) unless Retry-After says
    retry_backoff_max: int = 16
    timeout: float = 30.0


class VaultClient:
    """Secrets, keys and certificates of one vault through one credential."""

    def __init__(
        self,
        vault_name: str,
        vault_url: str,
        credential: AsyncTokenCredential,
        options: ClientOptions,
        limiter: TokenBucket | None = None,
        identity_service: str = "the identity service",
    ) -> None:
        self.vault_name = vault_name
        self.options = options
        self.limiter = limiter or TokenBucket()
        self._vault_service = f"Key Vault {vault_name}"
        credential = _TracedCredential(credential, identity_service)  # type: ignore[assignment]
        kwargs: dict[str, Any] = {
            "retry_total": options.retry_total,
            "retry_status": options.retry_total,
            "retry_backoff_factor": options.retry_backoff_factor,
            "retry_backoff_max": options.retry_backoff_max,
            "timeout": options.timeout,
            "connection_timeout": min(options.timeout, 10.0),
            "read_timeout": options.timeout,
            "logging_enable": False,
        }
        if not env_proxies():
            # No proxy configured: our transport (http_transport.py). With HTTP(S)_PROXY set,
            # azure-core's aiohttp transport reads it (and ~/.netrc), as before.
            kwargs["use_env_settings"] = False
        self._secrets = SecretClient(
            vault_url,
            credential,
            policies=_lean_policies(credential, SecretChallenge, kwargs, decode=False),
            transport=make_transport(**kwargs),
            **kwargs,
        )
        self._secrets_url = f"{self._secrets.vault_url.rstrip('/')}/secrets/"
        self._secrets_api = self._secrets.api_version
        # The generated client's pipeline, which its own operations run (no public handle;
        # `send_request` deep-copies and re-parses every request).
        self._secrets_pipeline = self._secrets._client._client._pipeline
        self._url, self._credential, self._kwargs = vault_url, credential, kwargs
        self._keys: KeyClient | None = None
        self._certs: CertificateClient | None = None

    async def _key_client(self) -> KeyClient:
        if self._keys is None:
            aio, policy = await _sdk(*_KEYS)
            if self._keys is None:  # another mount may have built it meanwhile
                self._keys = aio.KeyClient(
                    self._url,
                    self._credential,
                    **self._options(policy),
                    transport=make_transport(**self._kwargs),
                    **self._kwargs,
                )
        return self._keys

    async def _cert_client(self) -> CertificateClient:
        if self._certs is None:
            aio, policy = await _sdk(*_CERTS)
            if self._certs is None:
                self._certs = aio.CertificateClient(
                    self._url,
                    self._credential,
                    **self._options(policy),
                    transport=make_transport(**self._kwargs),
                    **self._kwargs,
                )
        return self._certs

    def _options(self, policy_module: Any) -> dict[str, Any]:
        challenge = policy_module.AsyncChallengeAuthPolicy
        return {"policies": _lean_policies(self._credential, challenge, self._kwargs)}

    async def close(self) -> None:
        clients = [c for c in (self._secrets, self._keys, self._certs) if c is not None]
        await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)

    async def _call(self, what: tuple[str, str, str], coro: Any) -> Any:
        waiting = [self._vault_service]
        reset = _WAITING_ON.set(waiting)
        try:
            async with asyncio.timeout(self.options.timeout):
                await self.limiter.acquire()
                return await coro
        except ProviderError:
            raise
        except (TimeoutError, ServiceRequestTimeoutError, ServiceResponseTimeoutError):
            raise ProviderError(
                Kind.DEADLINE_EXCEEDED,
                f"{object_context(*what)}: {waiting[0]} did not answer within "
                f"{self.options.timeout:g}s",
                reason="timeout",
            ) from None
        except AzureError as exc:
            if waiting[0] != self._vault_service and isinstance(
                exc, ServiceRequestError | ServiceResponseError
            ):
                raise ProviderError(
                    Kind.UNAVAILABLE,
                    f"{object_context(*what)}: cannot reach {waiting[0]}: {_short(exc)}",
                    reason="identity service",
                ) from None
            raise map_error(exc, what, self.vault_name) from None
        finally:
            _WAITING_ON.reset(reset)

    async def get_secret(self, name: str, version: str) -> SecretValue:
        what = ("secret", name, version)
        secret = await self._call(what, self._get_secret_bundle(name, version))
        if secret.get("value") is None:
            raise ProviderError(Kind.INTERNAL, f"{object_context(*what)}: secret value is nil")
        sid = secret.get("id")
        return SecretValue(
            value=secret["value"],
            content_type=secret.get("contentType") or "",
            kid=secret.get("kid") or "",
            version=_secret_version(sid) if sid else "",
        )

    async def _get_secret_bundle(self, name: str, version: str) -> dict[str, Any]:
        """Get Secret through the SecretClient's own pipeline (retries, Retry-After, timeouts,
        challenge auth): the request `SecretClient.get_secret` sends and the errors it raises,
        without the generated request builder and model deserialisation (~40 % of a GET's CPU).
        The bundle is the body's JSON (Key Vault answers UTF-8; `json.loads` reads bytes)."""
        request = HttpRequest(
            "GET",
            f"{self._secrets_url}{quote(name, safe='')}/{quote(version, safe='')}"
            f"?api-version={self._secrets_api}",
            headers={"Accept": "application/json"},
        )
        answer = await self._secrets_pipeline.run(request, stream=False)
        response = answer.http_response
        if response.status_code != 200:
            error = _GET_ERRORS.get(response.status_code, HttpResponseError)
            raise error(response=response)
        try:
            bundle = json.loads(response.body())
        except ValueError:
            bundle = None
        if not isinstance(bundle, dict):
            raise HttpResponseError(message="Get Secret answered no JSON object", response=response)
        return bundle

    async def get_key(self, name: str, version: str) -> KeyValue:
        what = ("key", name, version)
        keys = await self._key_client()
        key = await self._call(what, keys.get_key(name, version or None))
        jwk = key.key
        return KeyValue(
            kty=str(getattr(jwk.kty, "value", jwk.kty) or ""),
            version=key.properties.version or "",
            n=jwk.n,
            e=jwk.e,
            crv=str(getattr(jwk.crv, "value", jwk.crv)) if jwk.crv else None,
            x=jwk.x,
            y=jwk.y,
        )

    async def get_certificate(self, name: str, version: str) -> CertificateValue:
        what = ("cert", name, version)
        certs = await self._cert_client()
        if version:
            cert = await self._call(what, certs.get_certificate_version(name, version))
        else:
            cert = await self._call(what, certs.get_certificate(name))
        if cert.cer is None:
            raise ProviderError(Kind.INTERNAL, f"{object_context(*what)}: certificate value is nil")
        return CertificateValue(cer=bytes(cert.cer), version=cert.properties.version or "")

    async def list_versions(self, object_type: str, name: str) -> list[VersionInfo]:
        """Enabled versions with their creation time (missing → epoch), as upstream lists them."""
        what = (object_type, name, "")

        async def collect() -> list[VersionInfo]:
            if object_type == "secret":
                pager: Any = self._secrets.list_properties_of_secret_versions(name)
            elif object_type == "key":
                pager = (await self._key_client()).list_properties_of_key_versions(name)
            else:
                pager = (await self._cert_client()).list_properties_of_certificate_versions(name)
            out: list[VersionInfo] = []
            async for props in pager:
                if props.enabled is False:
                    continue
                if len(out) == MAX_LISTED_VERSIONS:
                    raise ProviderError(
                        Kind.FAILED_PRECONDITION,
                        f"{object_context(*what)}: {object_type} {name} has more than "
                        f"{MAX_LISTED_VERSIONS} enabled versions; objectVersionHistory reads "
                        "at most that many",
                        reason="objectVersionHistory",
                    )
                out.append(VersionInfo(props.version or "", props.created_on or EPOCH))
            return out

        result: list[VersionInfo] = await self._call(what, collect())
        return result

    async def list_objects(self, object_type: str) -> list[ObjectInfo]:
        """Every secret, key or certificate of the vault with its tags and whether its current
        version is enabled (Key Vault's list answers carry both), for selections."""
        what = (object_type, "", "")

        async def collect() -> list[ObjectInfo]:
            if object_type == "secret":
                pager: Any = self._secrets.list_properties_of_secrets()
            elif object_type == "key":
                pager = (await self._key_client()).list_properties_of_keys()
            else:
                pager = (await self._cert_client()).list_properties_of_certificates()
            out: list[ObjectInfo] = []
            async for props in pager:
                if len(out) == MAX_LISTED_OBJECTS:
                    raise ProviderError(
                        Kind.FAILED_PRECONDITION,
                        f"Key Vault {self.vault_name} holds more than {MAX_LISTED_OBJECTS} "
                        f"objects of type {object_type}; a selection reads at most that many",
                        reason="objectNamePattern",
                    )
                out.append(
                    ObjectInfo(props.name or "", props.enabled is not False, props.tags or {})
                )
            return out

        result: list[ObjectInfo] = await self._call(what, collect())
        return result


def map_error(exc: AzureError, what: tuple[str, str, str], vault: str) -> ProviderError:
    prefix = object_context(*what)
    object_type, name, version = what
    if isinstance(exc, ResourceNotFoundError):
        pinned = f" version {version}" if version else ""
        return ProviderError(
            Kind.NOT_FOUND,
            f"{prefix}: {object_type} {name}{pinned} not found in Key Vault {vault}",
        )
    if isinstance(exc, ClientAuthenticationError):
        # Entra ID refused the credential (AADSTS700016 unknown client, 7000215 wrong secret,
        # 70021 no matching federated credential: HTTP 400 or 401) or Key Vault answered 401.
        return ProviderError(
            Kind.UNAUTHENTICATED,
            f"{prefix}: authentication to Key Vault {vault} failed: {_short(exc)}",
        )
    if isinstance(exc, HttpResponseError) and exc.status_code is not None:
        status = exc.status_code
        if status == 403 and "disabled" in str(getattr(exc, "message", "") or exc).lower():
            pinned = f" version {version}" if version else " (its current version)"
            return ProviderError(
                Kind.FAILED_PRECONDITION,
                f"{prefix}: {object_type} {name}{pinned} is disabled in Key Vault {vault}",
            )
        if status == 403:
            return ProviderError(
                Kind.PERMISSION_DENIED,
                f"{prefix}: access to Key Vault {vault} denied (403): the identity needs the "
                f"role {ROLE_HINTS.get(object_type, '')} on the vault",
            )
        if status == 429:
            return ProviderError(
                Kind.UNAVAILABLE,
                f"{prefix}: Key Vault {vault} is throttling requests (429) and retries ran "
                "out; try again later",
            )
        if status == 400:
            return ProviderError(
                Kind.INVALID_ARGUMENT,
                f"{prefix}: Key Vault {vault} rejected the request: {_short(exc)}",
            )
        if status >= 500:
            return ProviderError(
                Kind.UNAVAILABLE, f"{prefix}: Key Vault {vault} answered {status}: {_short(exc)}"
            )
        return ProviderError(Kind.INTERNAL, f"{prefix}: Key Vault {vault} answered {status}")
    if isinstance(exc, ServiceRequestError | ServiceResponseError):
        return ProviderError(
            Kind.UNAVAILABLE, f"{prefix}: cannot reach Key Vault {vault}: {_short(exc)}"
        )
    if "timed out" in str(exc).lower():
        return ProviderError(
            Kind.DEADLINE_EXCEEDED, f"{prefix}: Key Vault {vault} did not answer in time"
        )
    return ProviderError(Kind.UNAVAILABLE, f"{prefix}: {_short(exc)}")


def _short(exc: AzureError) -> str:
    text = (
        str(getattr(exc, "message", None) or exc).splitlines()[0]
        if str(exc)
        else type(exc).__name__
    )
    return text[:300]
