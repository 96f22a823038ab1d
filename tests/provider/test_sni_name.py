"""Identity binding without `--sni-name`: the name computed from the API server's certificate,
as upstream v1.8.2 does (docs/provider.md, "Identity binding"). Real TLS servers throughout:
the session emulator's token proxy port (an AKS-like API server endpoint whose certificate
carries `hcp-kubernetes.<TEST_CLUSTER_ID>.svc.cluster.local`), and, for the bad-input rows,
servers made here with the emulator's own certificate code. `kubernetes.default.svc.cluster.local`
resolves to 127.0.0.1 inside tests/netns-run; the port comes from KUBERNETES_SERVICE_PORT."""

from __future__ import annotations

import asyncio
import json
import os
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from keyvault_emulator.tls import ensure_pki, token_proxy_ssl_context
from provider_azure import cluster_sni
from provider_azure.errors import Kind, ProviderError
from provider_azure.token_proxy import RETRY_UNREACHABLE, SniResolver, configure
from testbed.emulator import (
    API_SERVER_HOST,
    TEST_CLUSTER_ID,
    TOKEN_PROXY_PORT,
    TOKEN_PROXY_SNI,
    TOKEN_PROXY_URL,
)
from testbed.peers import peer
from testbed.provider import files_of, ours, upstream, versions_of, with_cluster_ca

from .conftest import ProviderWorld
from .test_identity_binding import _attrib, _provider, _refused

ApiServer = Callable[..., Awaitable[tuple[str, int]]]


@pytest.fixture
async def apiserver(tmp_path: Path) -> AsyncIterator[ApiServer]:
    """Starts TLS servers presenting a certificate for the given names, from a CA of its own;
    returns (that CA's file, the port). `handshake=False`: accepts TCP, never answers TLS."""
    servers: list[asyncio.Server] = []
    pki = ensure_pki(tmp_path / "apiserver")

    async def start(*names: str, handshake: bool = True) -> tuple[str, int]:
        ctx = token_proxy_ssl_context(pki.ca_path.parent, "proxy.ests.aks", list(names))

        async def silent(_: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            await asyncio.sleep(30)
            w.close()

        async def close(_: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            w.close()

        server = await asyncio.start_server(
            close if handshake else silent, "127.0.0.1", 0, ssl=ctx if handshake else None
        )
        servers.append(server)
        return str(pki.ca_path), server.sockets[0].getsockname()[1]

    yield start
    for server in servers:
        server.close()


def test_known_answer() -> None:
    """The session emulator's SNI name was computed apart from the product (coreutils)."""
    assert cluster_sni.server_name(TEST_CLUSTER_ID) == TOKEN_PROXY_SNI


def test_the_first_san_of_the_shape_wins() -> None:
    names = [
        "kubernetes",
        "hcp-kubernetes.a.b.svc.cluster.local",
        "hcp-kubernetes.c.svc.cluster.local",
    ]
    assert cluster_sni.cluster_id(names) == "a.b"


async def test_computed_from_the_emulator_apiserver(
    world: ProviderWorld, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", str(TOKEN_PROXY_PORT))
    assert await cluster_sni.compute(str(world.emulator.ca_path)) == TOKEN_PROXY_SNI


async def test_mount_without_sni_name(
    world: ProviderWorld, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No `--sni-name`: the provider computes it (once) and the token proxy, which answers
    only that name, gives the token."""
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", str(TOKEN_PROXY_PORT))
    provider = _provider(configure(TOKEN_PROXY_URL, "", str(world.emulator.ca_path)))
    try:
        provider.clients.compute_sni()
        world.emulator.clear_requests()
        result = await provider.mount(json.dumps(_attrib(world)), "null", "420")
        await provider.mount(json.dumps(_attrib(world)), "null", "420")
    finally:
        await provider.close()
    assert [(f.path, f.contents) for f in result.files] == [("plain", b"plain-value")]
    assert provider.clients.token_proxy.sni_name == TOKEN_PROXY_SNI
    services = [r["service"] for r in world.emulator.requests()]
    assert "token-proxy" in services and "entra" not in services


# --- the bad-input table (docs/provider.md, "Identity binding": computing the SNI name) ------


@pytest.mark.parametrize(
    ("names", "words"),
    [
        pytest.param(
            [API_SERVER_HOST, "kubernetes.default.svc", "kubernetes"],
            [
                "no SAN hcp-kubernetes.<cluster id>.svc.cluster.local",
                f"it names {API_SERVER_HOST}, kubernetes.default.svc, kubernetes",
                "--sni-name",
            ],
            id="no-san-of-the-shape",
        ),
        pytest.param(
            [API_SERVER_HOST, "hcp-kubernetes..svc.cluster.local"],
            ["empty cluster ID", "hcp-kubernetes..svc.cluster.local"],
            id="empty-cluster-id",
        ),
        pytest.param(
            # The Go provider panics on this one (its slice bounds cross): we refuse it.
            [API_SERVER_HOST, "hcp-kubernetes.svc.cluster.local"],
            ["empty cluster ID", "hcp-kubernetes.svc.cluster.local"],
            id="prefix-and-suffix-overlap",
        ),
        pytest.param(
            ["hcp-kubernetes.x.svc.cluster.local"],
            ["not trusted", "Hostname mismatch", f"for {API_SERVER_HOST}"],
            id="certificate-not-for-the-host",
        ),
    ],
)
async def test_bad_certificate(apiserver: ApiServer, names: list[str], words: list[str]) -> None:
    ca, port = await apiserver(*names)
    with pytest.raises(ProviderError) as info:
        await cluster_sni.compute(ca, str(port))
    assert info.value.kind is Kind.FAILED_PRECONDITION, info.value.message
    assert info.value.message.startswith("cannot compute the SNI name: ")
    for word in words:
        assert word in info.value.message


async def test_ca_does_not_trust_it(apiserver: ApiServer, tmp_path: Path) -> None:
    _, port = await apiserver(API_SERVER_HOST, "hcp-kubernetes.x.svc.cluster.local")
    other = ensure_pki(tmp_path / "other").ca_path
    with pytest.raises(ProviderError) as info:
        await cluster_sni.compute(str(other), str(port))
    assert info.value.kind is Kind.FAILED_PRECONDITION, info.value.message
    assert f"the API server at {API_SERVER_HOST}:{port} is not trusted" in info.value.message
    assert "self-signed certificate in certificate chain" in info.value.message


@pytest.mark.parametrize(
    ("ca", "words"),
    [
        (
            "/nonexistent/ca.crt",
            ["cannot read the cluster CA file /nonexistent/ca.crt", "--sni-name"],
        ),
        pytest.param("garbage", ["no valid certificate in the cluster CA file"], id="not-pem"),
        pytest.param("huge", ["has more than 1048576 bytes"], id="over-1-mib"),
    ],
)
async def test_bad_ca_file(tmp_path: Path, ca: str, words: list[str]) -> None:
    if ca == "garbage":
        (tmp_path / ca).write_text(
            "-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n"
        )
        ca = str(tmp_path / ca)
    elif ca == "huge":
        (tmp_path / ca).write_bytes(b"x" * (cluster_sni.MAX_CA_FILE + 1))
        ca = str(tmp_path / ca)
    with pytest.raises(ProviderError) as info:
        await cluster_sni.compute(ca, "1")
    assert info.value.kind is Kind.FAILED_PRECONDITION, info.value.message
    for word in words:
        assert word in info.value.message


async def test_unreachable(world: ProviderWorld) -> None:
    with pytest.raises(ProviderError) as info:
        await cluster_sni.compute(str(world.emulator.ca_path), "1")
    assert info.value.kind is Kind.UNAVAILABLE, info.value.message
    assert f"cannot reach the API server at {API_SERVER_HOST}:1" in info.value.message
    assert "--sni-name" in info.value.message


async def test_no_tls_answer_is_bounded(
    apiserver: ApiServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    ca, port = await apiserver(handshake=False)
    monkeypatch.setattr(cluster_sni, "CONNECT_TIMEOUT", 0.3)
    with pytest.raises(ProviderError) as info:
        await asyncio.wait_for(cluster_sni.compute(ca, str(port)), 5)
    assert info.value.kind is Kind.UNAVAILABLE, info.value.message
    assert "no TLS connection within 0.3 s" in info.value.message


@pytest.mark.parametrize("port", ["https", "0", "70000", "9" * 60])
async def test_bad_port_variable(world: ProviderWorld, port: str) -> None:
    with pytest.raises(ProviderError) as info:
        await cluster_sni.compute(str(world.emulator.ca_path), port)
    assert info.value.kind is Kind.FAILED_PRECONDITION, info.value.message
    assert "KUBERNETES_SERVICE_PORT" in info.value.message and "9" * 41 not in info.value.message


async def test_failure_is_kept_and_reported_by_binding_mounts(
    world: ProviderWorld, apiserver: ApiServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As upstream: computed once; the failure is each identity-binding mount's answer, with the
    code of its cause; other identities are untouched."""
    ca, port = await apiserver(API_SERVER_HOST)
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", str(port))
    provider = _provider(configure(TOKEN_PROXY_URL, "", ca))
    try:
        provider.clients.compute_sni()
        for _ in range(2):
            err = await _refused(provider, _attrib(world))
            assert err.kind is Kind.FAILED_PRECONDITION, err.message
            assert err.message.startswith(
                "useAzureTokenProxy: the provider's identity-binding proxy is not usable: "
                "cannot compute the SNI name: no SAN hcp-kubernetes."
            )
        sp = _attrib(world, clientID="", useAzureTokenProxy="false")
        result = await provider.mount(json.dumps(sp), json.dumps(world.secrets), "420")
        assert [f.path for f in result.files] == ["plain"]
    finally:
        await provider.close()


# --- both providers as pods would run them: the CA at its fixed path, no --sni-name ----------


@pytest.mark.peers
def test_same_sni_name_as_the_go_provider(tmp_path: Path, world: ProviderWorld) -> None:
    """Both providers, started without `--sni-name`, compute the name from the same API server
    certificate (each log says which), and both mount through the proxy, which answers only
    the name that TEST_CLUSTER_ID gives."""
    ca = world.emulator.ca_path
    pod_env = {"KUBERNETES_SERVICE_PORT": str(TOKEN_PROXY_PORT)}
    flag = f"--token-proxy-url={TOKEN_PROXY_URL}"
    mine = ours(str(tmp_path / "ours.sock"), flag, log=tmp_path / "ours.log", env=pod_env)
    theirs = upstream(
        peer("azure-provider"),
        str(tmp_path / "go.sock"),
        flag,
        log=tmp_path / "go.log",
        env=pod_env,
    )
    for p in (mine, theirs):
        p.argv = with_cluster_ca(p.argv, ca)
    attrib = _attrib(world)
    with mine, theirs:
        a, b = mine.mount(attrib), theirs.mount(attrib)
    assert files_of(a) == files_of(b) and [f[0] for f in files_of(a)] == ["plain"]
    assert versions_of(a) == versions_of(b)
    go_log = (tmp_path / "go.log").read_text()
    assert re.search(rf'sniName="{re.escape(TOKEN_PROXY_SNI)}"', go_log), go_log[-2000:]
    assert TOKEN_PROXY_SNI in (tmp_path / "ours.log").read_text()


@pytest.mark.peers
async def test_deliberate_difference_go_provider_panics_on_an_overlapping_san(
    apiserver: ApiServer, tmp_path: Path
) -> None:
    """A SAN `hcp-kubernetes.svc.cluster.local` (prefix and suffix overlap): the Go provider
    dies at start (slice bounds out of range), for every mount, not only identity binding; ours
    refuses the name (row `prefix-and-suffix-overlap` above) and serves the other modes."""
    ca, port = await apiserver(API_SERVER_HOST, "hcp-kubernetes.svc.cluster.local")
    argv = with_cluster_ca(
        [str(peer("azure-provider")), f"--endpoint=unix://{tmp_path}/go.sock"], ca
    )
    proc = await asyncio.create_subprocess_exec(
        *argv,
        env={**os.environ, "KUBERNETES_SERVICE_PORT": str(port)},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), 30)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 2, out.decode()[-2000:]
    assert b"panic: runtime error: slice bounds out of range [15:14]" in out
    assert b"identitybinding.extractClusterID" in out


async def test_unreachable_is_tried_again_after_the_interval(
    world: ProviderWorld, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Beyond upstream (which needs a restart): after an Unavailable try, a binding mount tries
    again once RETRY_UNREACHABLE has passed since the last try, never sooner (fake time)."""
    now = [1000.0]
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "1")  # nothing listens: unreachable
    provider = _provider(configure(TOKEN_PROXY_URL, "", str(world.emulator.ca_path)))
    provider.clients.sni = SniResolver(provider.clients.token_proxy, clock=lambda: now[0])
    try:
        err = await _refused(provider, _attrib(world))
        assert err.kind is Kind.UNAVAILABLE, err.message
        monkeypatch.setenv("KUBERNETES_SERVICE_PORT", str(TOKEN_PROXY_PORT))  # back
        now[0] += RETRY_UNREACHABLE - 1
        err = await _refused(provider, _attrib(world))
        assert err.kind is Kind.UNAVAILABLE and provider.clients.sni.attempts == 1
        now[0] += 1
        result = await provider.mount(json.dumps(_attrib(world)), "null", "420")
        assert [f.path for f in result.files] == ["plain"]
        assert provider.clients.sni.attempts == 2
        assert provider.clients.token_proxy.sni_name == TOKEN_PROXY_SNI
        now[0] += 10 * RETRY_UNREACHABLE  # computed: kept, never tried again
        await provider.mount(json.dumps(_attrib(world)), "null", "420")
        assert provider.clients.sni.attempts == 2
    finally:
        await provider.close()


async def test_other_failures_are_kept(
    world: ProviderWorld, apiserver: ApiServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A certificate without the SAN is the cluster's answer, not a hiccup: kept, as upstream."""
    now = [0.0]
    ca, port = await apiserver(API_SERVER_HOST)
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", str(port))
    provider = _provider(configure(TOKEN_PROXY_URL, "", ca))
    provider.clients.sni = SniResolver(provider.clients.token_proxy, clock=lambda: now[0])
    try:
        for _ in range(2):
            err = await _refused(provider, _attrib(world))
            assert err.kind is Kind.FAILED_PRECONDITION, err.message
            now[0] += 10 * RETRY_UNREACHABLE
        assert provider.clients.sni.attempts == 1
    finally:
        await provider.close()
