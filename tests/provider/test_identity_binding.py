"""Identity binding (`useAzureTokenProxy`): the pod's `api://AKSIdentityBinding` token exchanged
at the session emulator's token proxy. One test per row of docs/provider.md's bad-input table;
the success path against the Go provider is in test_differential.py."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from keyvault_emulator.tls import ensure_pki
from provider_azure import clouds
from provider_azure.auth import ClientCache
from provider_azure.errors import Kind, ProviderError
from provider_azure.fetch import ContentOptions
from provider_azure.keyvault import ClientOptions
from provider_azure.metrics import Metrics
from provider_azure.provider import Provider
from provider_azure.token_proxy import TokenProxy, configure
from testbed.emulator import (
    IDENTITY_BINDING_AUDIENCE,
    TOKEN_PROXY_SNI,
    TOKEN_PROXY_URL,
    WI_AUDIENCE,
    workload_token,
)
from testbed.mount_attributes import attributes, objects_yaml

from .conftest import IB_MI, ProviderWorld

NO_CA = "/nonexistent/ca.crt"  # so the system roots (SSL_CERT_FILE) are trusted


def _proxy(url: str = TOKEN_PROXY_URL, sni: str = TOKEN_PROXY_SNI, ca: str = NO_CA) -> TokenProxy:
    return configure(url, sni, ca)


def _provider(proxy: TokenProxy) -> Provider:
    cache = ClientCache(ClientOptions(retry_total=0, timeout=10), token_proxy=proxy)
    return Provider(ContentOptions(), clouds.PUBLIC, Metrics(), cache)


@pytest.fixture
async def provider() -> AsyncIterator[Provider]:
    p = _provider(_proxy())
    yield p
    await p.close()


def _attrib(
    world: ProviderWorld, tokens: dict[str, str] | None = None, **extra: str
) -> dict[str, str]:
    params = {"clientID": IB_MI, "useAzureTokenProxy": "true", **extra}
    if tokens is None:
        tokens = {IDENTITY_BINDING_AUDIENCE: workload_token(audience=IDENTITY_BINDING_AUDIENCE)}
    return attributes(
        vault=world.vault,
        tenant=world.tenant,
        objects=objects_yaml({"objectName": "plain", "objectType": "secret"}),
        tokens=tokens,
        **params,
    )


async def _refused(provider: Provider, attrib: dict[str, str]) -> ProviderError:
    with pytest.raises(ProviderError) as info:
        await provider.mount(json.dumps(attrib), "null", "420")
    return info.value


async def test_binding_mount_goes_through_the_proxy(
    provider: Provider, world: ProviderWorld
) -> None:
    world.emulator.clear_requests()
    result = await provider.mount(json.dumps(_attrib(world)), "null", "420")
    assert [(f.path, f.contents) for f in result.files] == [("plain", b"plain-value")]
    services = [r["service"] for r in world.emulator.requests(identity=IB_MI)]
    assert services.count("token-proxy") == 1 and "entra" not in services


async def test_credential_keyed_by_the_exact_token(
    provider: Provider, world: ProviderWorld
) -> None:
    first = _attrib(world)
    await provider.mount(json.dumps(first), "null", "420")
    await provider.mount(json.dumps(first), "null", "420")
    assert provider.clients.credentials_built == 1
    # Same pod and identity, a new token (kubelet refreshed it): its own credential.
    fresh = workload_token(audience=IDENTITY_BINDING_AUDIENCE, extra={"jti": "refreshed"})
    await provider.mount(
        json.dumps(_attrib(world, {IDENTITY_BINDING_AUDIENCE: fresh})), "null", "420"
    )
    assert provider.clients.credentials_built == 2


# --- the bad-input table (docs/provider.md, "Identity binding") -----------------------------


@pytest.mark.parametrize(
    ("extra", "tokens", "words"),
    [
        pytest.param(
            {},
            {WI_AUDIENCE: "a.b.c"},
            ["token for audience api://AKSIdentityBinding not found", "identity binding"],
            id="no-token-for-the-audience",
        ),
        pytest.param(
            {}, {}, ["identity binding tokens", "service account tokens not found"], id="no-tokens"
        ),
        pytest.param(
            {"clientID": ""},
            None,
            ["useAzureTokenProxy", "clientID is required for identity binding"],
            id="no-client-id",
        ),
        pytest.param(
            {"useVMManagedIdentity": "true"},
            None,
            ["only one identity mode", "useVMManagedIdentity", "useAzureTokenProxy"],
            id="with-vm-managed-identity",
        ),
        pytest.param(
            {"useAzureTokenProxy": "yes-please-" + "x" * 100},
            None,
            ["useAzureTokenProxy", "is not a boolean", "(111 chars)"],
            id="not-a-boolean-cut",
        ),
    ],
)
async def test_bad_parameters(
    provider: Provider,
    world: ProviderWorld,
    extra: dict[str, str],
    tokens: dict[str, str] | None,
    words: list[str],
) -> None:
    attrib = _attrib(world, tokens, **extra)
    if tokens == {}:
        attrib.pop("csi.storage.k8s.io/serviceAccount.tokens")
    err = await _refused(provider, attrib)
    assert err.kind is Kind.INVALID_ARGUMENT, err.message
    for word in words:
        assert word in err.message


@pytest.mark.parametrize(
    ("url", "sni", "words"),
    [
        ("http://127.0.0.1:8643", TOKEN_PROXY_SNI, ["--token-proxy-url", "https scheme"]),
        ("https://u:p@127.0.0.1:8643", TOKEN_PROXY_SNI, ["--token-proxy-url", "user info"]),
        ("https://127.0.0.1:8643/?a=b", TOKEN_PROXY_SNI, ["--token-proxy-url", "query"]),
        ("https://127.0.0.1:8643/#f", TOKEN_PROXY_SNI, ["--token-proxy-url", "fragment"]),
        ("https://127.0.0.1:99999", TOKEN_PROXY_SNI, ["--token-proxy-url", "is not a URL"]),
        ("https://" + "h" * 200, TOKEN_PROXY_SNI, ["--token-proxy-url", "(208 chars)", "valid"]),
        (TOKEN_PROXY_URL, "bad name!", ["--sni-name", "must be a DNS name"]),
    ],
)
async def test_bad_provider_flags(
    world: ProviderWorld, url: str, sni: str, words: list[str]
) -> None:
    provider = _provider(_proxy(url, sni))
    try:
        err = await _refused(provider, _attrib(world))
    finally:
        await provider.close()
    assert err.kind is Kind.FAILED_PRECONDITION, err.message
    assert "useAzureTokenProxy" in err.message
    for word in words:
        assert word in err.message
    assert "h" * 41 not in err.message


async def test_proxy_url_missing_means_the_in_cluster_default(world: ProviderWorld) -> None:
    provider = _provider(_proxy(url=""))
    try:
        err = await _refused(provider, _attrib(world))
    finally:
        await provider.close()
    assert err.kind is Kind.UNAVAILABLE, err.message
    assert (
        "identity-binding token proxy (https://kubernetes.default.svc.cluster.local" in err.message
    )


async def test_proxy_unreachable(world: ProviderWorld) -> None:
    provider = _provider(_proxy(url="https://127.0.0.1:1"))
    try:
        err = await _refused(provider, _attrib(world))
    finally:
        await provider.close()
    assert err.kind is Kind.UNAVAILABLE, err.message
    assert "cannot reach the identity-binding token proxy (https://127.0.0.1:1" in err.message


async def test_tls_name_mismatch(world: ProviderWorld) -> None:
    provider = _provider(_proxy(sni="other.ests.aks"))
    try:
        err = await _refused(provider, _attrib(world))
    finally:
        await provider.close()
    assert err.kind is Kind.UNAVAILABLE, err.message
    assert "SNI other.ests.aks" in err.message and "certificate" in err.message.lower()


@pytest.fixture
def other_ca(tmp_path: Path) -> Path:
    """The CA of another emulator state dir: one that never signed the proxy's certificate."""
    return ensure_pki(tmp_path / "other").ca_path


async def test_cluster_ca_file_is_the_only_trust(world: ProviderWorld, other_ca: Path) -> None:
    """With the cluster CA file present, the system roots (which trust the emulator) are not
    used: a CA file of another CA fails the handshake."""
    provider = _provider(_proxy(ca=str(other_ca)))
    try:
        err = await _refused(provider, _attrib(world))
    finally:
        await provider.close()
    assert err.kind is Kind.UNAVAILABLE, err.message
    assert "certificate verify failed" in err.message


async def test_cluster_ca_file_trusted(world: ProviderWorld) -> None:
    provider = _provider(_proxy(ca=str(world.emulator.ca_path)))
    try:
        result = await provider.mount(json.dumps(_attrib(world)), "null", "420")
    finally:
        await provider.close()
    assert [f.path for f in result.files] == ["plain"]


@pytest.mark.parametrize(
    ("token", "words"),
    [
        pytest.param(
            workload_token(audience=WI_AUDIENCE),
            ["AADSTS700212", "api://AKSIdentityBinding"],
            id="wrong-audience",
        ),
        pytest.param(
            workload_token(
                subject="system:serviceaccount:default:other", audience=IDENTITY_BINDING_AUDIENCE
            ),
            ["AADSTS70021", "system:serviceaccount:default:other"],
            id="unbound-service-account",
        ),
        pytest.param(
            workload_token(audience=IDENTITY_BINDING_AUDIENCE, lifetime=-60),
            ["AADSTS700024"],
            id="expired",
        ),
    ],
)
async def test_proxy_refuses(
    provider: Provider, world: ProviderWorld, token: str, words: list[str]
) -> None:
    err = await _refused(provider, _attrib(world, {IDENTITY_BINDING_AUDIENCE: token}))
    assert err.kind is Kind.UNAUTHENTICATED, err.message
    for word in words:
        assert word in err.message


def test_requests_keep_their_path_and_query() -> None:
    proxy = _proxy("https://proxy.example:8443/base/")
    assert (
        proxy.target("https://login.microsoftonline.com/t/oauth2/v2.0/token?x=1")
        == "https://proxy.example:8443/base/t/oauth2/v2.0/token?x=1"
    )
    assert _proxy("https://p.example").target("https://h/t/a") == "https://p.example/t/a"
