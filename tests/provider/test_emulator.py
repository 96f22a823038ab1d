"""Through the real Azure SDK against the emulator: every content combination, every identity,
and the Key Vault failure rows (not found, 403, 429, no answer)."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import AsyncIterator

import pytest
from azure.core.exceptions import ResourceNotFoundError
from azure.identity.aio import ClientSecretCredential
from azure.keyvault.secrets.aio import SecretClient
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec as ec_mod

from provider_azure import clouds
from provider_azure.auth import ClientCache
from provider_azure.errors import Kind, ProviderError
from provider_azure.fetch import ContentOptions, MountResult
from provider_azure.keyvault import ClientOptions, VaultClient
from provider_azure.metrics import Metrics
from provider_azure.provider import Provider
from testbed.emulator import vault_url, workload_token
from testbed.mount_attributes import attributes, objects_yaml

from .conftest import (
    MI_USER,
    SP_DENIED_ID,
    SP_DENIED_SECRET,
    SP_ID,
    SP_SECRET,
    WI_APP,
    ProviderWorld,
    V,
)


@pytest.fixture(scope="module")
async def provider() -> AsyncIterator[Provider]:
    p = Provider(ContentOptions(), clouds.PUBLIC, Metrics(), ClientCache(ClientOptions(timeout=10)))
    yield p
    await p.close()


async def mount(
    provider: Provider,
    world: ProviderWorld,
    *objects: dict[str, object],
    secrets: object = None,
    **attrib: str,
) -> MountResult:
    a = attributes(vault=world.vault, objects=objects_yaml(*objects), tenant=world.tenant, **attrib)
    s = world.secrets if secrets is None else secrets
    return await provider.mount(json.dumps(a), s if isinstance(s, str) else json.dumps(s), "420")


def by_path(result: MountResult) -> dict[str, bytes]:
    return {f.path: f.contents for f in result.files}


async def test_secrets_and_encodings(provider: Provider, world: ProviderWorld) -> None:
    result = await mount(
        provider,
        world,
        {"objectName": "plain", "objectType": "secret"},
        {"objectName": "unicode", "objectType": "secret", "objectEncoding": "utf-8"},
        {"objectName": "b64", "objectType": "secret", "objectEncoding": "base64"},
        {
            "objectName": "hexed",
            "objectType": "secret",
            "objectEncoding": "hex",
            "filePermission": "0400",
        },
        {
            "objectName": "multi",
            "objectType": "secret",
            "objectVersion": V[1],
            "objectAlias": "pinned",
        },
    )
    files = by_path(result)
    assert files == {
        "plain": b"plain-value",
        "unicode": "h\u00e9llo \u2603".encode(),
        "b64": world.binary,
        "hexed": world.binary,
        "pinned": b"multi-1",
    }
    assert [f.mode for f in result.files] == [0o644, 0o644, 0o644, 0o400, 0o644]
    ids = [(v.id, v.version) for v in result.object_versions]
    assert ids[-1] == ("secret/multi", V[1])
    assert all(len(v) == 32 for _, v in ids)


async def test_version_history(provider: Provider, world: ProviderWorld) -> None:
    h = world.history
    result = await mount(
        provider, world, {"objectName": "hist", "objectType": "secret", "objectVersionHistory": 3}
    )
    assert [(f.path, f.contents) for f in result.files] == [
        ("hist/0", b"hist-4"),
        ("hist/1", b"hist-3"),
        ("hist/2", b"hist-1"),
        ("hist/3", b"hist-0"),
    ]
    assert [(v.id, v.version) for v in result.object_versions] == [
        ("secret/hist/0", h[4]),
        ("secret/hist/1", h[3]),
        ("secret/hist/2", h[1]),
        ("secret/hist/3", h[0]),
    ]
    result = await mount(
        provider,
        world,
        {
            "objectName": "hist",
            "objectType": "secret",
            "objectVersionHistory": 2,
            "objectVersion": h[3],
            "objectAlias": "from3",
        },
    )
    assert [(f.path, f.contents) for f in result.files] == [
        ("from3/0", b"hist-3"),
        ("from3/1", b"hist-1"),
        ("from3/2", b"hist-0"),
    ]


async def test_keys_public_pem(provider: Provider, world: ProviderWorld) -> None:
    names = ["rsa-key", "rsa-hsm", "ec-256", "ec-384", "ec-521", "rsa-pfx", "ec-pem"]
    result = await mount(provider, world, *({"objectName": n, "objectType": "key"} for n in names))
    files = by_path(result)
    for name in names:
        assert files[name].startswith(b"-----BEGIN PUBLIC KEY-----\n")
        serialization.load_pem_public_key(files[name])
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    assert files["rsa-pfx"] == world.rsa.key.public_key().public_bytes(
        serialization.Encoding.PEM, spki
    )
    assert files["ec-pem"] == world.ec.key.public_key().public_bytes(
        serialization.Encoding.PEM, spki
    )
    assert isinstance(
        serialization.load_pem_public_key(files["ec-384"]), ec_mod.EllipticCurvePublicKey
    )


@pytest.mark.parametrize("chain_name", ["rsa", "ec"])
async def test_certificates_every_format(
    provider: Provider, world: ProviderWorld, chain_name: str
) -> None:
    chain = getattr(world, chain_name)
    result = await mount(
        provider,
        world,
        {"objectName": f"{chain_name}-pem", "objectType": "cert", "objectAlias": "pem.cert"},
        {"objectName": f"{chain_name}-pfx", "objectType": "cert", "objectAlias": "pfx.cert"},
        {"objectName": f"{chain_name}-pfx", "objectType": "secret", "objectAlias": "pfx.secret"},
        {
            "objectName": f"{chain_name}-pfx",
            "objectType": "secret",
            "objectFormat": "pem",
            "objectAlias": "pfx.pem",
        },
        {
            "objectName": f"{chain_name}-pfx",
            "objectType": "secret",
            "objectFormat": "pfx",
            "objectAlias": "pfx.b64",
        },
        {
            "objectName": f"{chain_name}-pfx",
            "objectType": "secret",
            "objectFormat": "pfx",
            "objectEncoding": "base64",
            "objectAlias": "pfx.bin",
        },
        {"objectName": f"{chain_name}-pem", "objectType": "secret", "objectAlias": "pem.secret"},
    )
    files = by_path(result)
    leaf = chain.pem(chain.leaf)
    assert files["pem.cert"] == leaf and files["pfx.cert"] == leaf
    assert files["pfx.secret"] == chain.key_pkcs8_pem + chain.ordered_pem
    assert files["pfx.pem"] == files["pfx.secret"]
    assert base64.b64decode(files["pfx.b64"]) == files["pfx.bin"]
    from cryptography.hazmat.primitives.serialization import pkcs12

    bundle = pkcs12.load_pkcs12(files["pfx.bin"], None)
    assert bundle.cert is not None and bundle.cert.certificate == chain.leaf
    # A PEM certificate secret is written as Key Vault stores it.
    assert files["pem.secret"].startswith(chain.key_pkcs8_pem) and leaf in files["pem.secret"]


async def test_leaf_only_pfx_and_cert_history(provider: Provider, world: ProviderWorld) -> None:
    result = await mount(
        provider,
        world,
        {"objectName": "leaf-only", "objectType": "secret"},
        {"objectName": "cert-multi", "objectType": "cert", "objectVersionHistory": 2},
        {
            "objectName": "cert-multi",
            "objectType": "secret",
            "objectVersion": V[1],
            "objectAlias": "pinned",
        },
    )
    files = by_path(result)
    assert files["leaf-only"] == world.rsa2.key_pkcs8_pem + world.rsa2.pem(world.rsa2.leaf)
    leaves = {c.pem(c.leaf) for c in (world.ec, world.rsa, world.rsa2)}
    assert {files[f"cert-multi/{i}"] for i in range(3)} == leaves
    assert files["pinned"] == world.rsa.key_pkcs8_pem + world.rsa.ordered_pem


async def test_separate_cert_and_key_files(world: ProviderWorld) -> None:
    p = Provider(
        ContentOptions(write_cert_and_key_in_separate_files=True), clouds.PUBLIC, Metrics()
    )
    try:
        result = await mount(
            p,
            world,
            {"objectName": "ec-pfx", "objectType": "secret"},
            {"objectName": "plain", "objectType": "secret"},
        )
    finally:
        await p.close()
    assert [f.path for f in result.files] == ["ec-pfx.crt", "ec-pfx.key", "ec-pfx", "plain"]
    files = by_path(result)
    assert (
        files["ec-pfx.crt"] == world.ec.ordered_pem
        and files["ec-pfx.key"] == world.ec.key_pkcs8_pem
    )
    assert [v.id for v in result.object_versions] == ["secret/ec-pfx"] * 3 + ["secret/plain"]


async def test_no_pem_chain_construction(world: ProviderWorld) -> None:
    p = Provider(ContentOptions(construct_pem_chain=False), clouds.PUBLIC, Metrics())
    try:
        result = await mount(p, world, {"objectName": "rsa-pfx", "objectType": "secret"})
    finally:
        await p.close()
    r = world.rsa
    assert result.files[0].contents == r.key_pkcs8_pem + r.pem(r.leaf) + r.pem(r.root) + r.pem(
        r.intermediate
    )


async def test_managed_identity_system_and_user(provider: Provider, world: ProviderWorld) -> None:
    for extra in ({}, {"userAssignedIdentityID": MI_USER}):
        result = await mount(
            provider,
            world,
            {"objectName": "plain", "objectType": "secret"},
            secrets="null",
            useVMManagedIdentity="true",
            **extra,
        )
        assert by_path(result) == {"plain": b"plain-value"}
    assert world.emulator.requests(service="imds")


async def test_workload_identity(provider: Provider, world: ProviderWorld) -> None:
    tokens = {"api://AzureADTokenExchange": workload_token()}
    result = await mount(
        provider,
        world,
        {"objectName": "plain", "objectType": "secret"},
        secrets="null",
        clientID=WI_APP,
        tokens=tokens,
    )
    assert by_path(result) == {"plain": b"plain-value"}


async def test_workload_identity_wrong_subject_is_refused(
    provider: Provider, world: ProviderWorld
) -> None:
    tokens = {
        "api://AzureADTokenExchange": workload_token(
            subject="system:serviceaccount:default:intruder"
        )
    }
    with pytest.raises(ProviderError) as info:
        await mount(
            provider,
            world,
            {"objectName": "plain", "objectType": "secret"},
            secrets="null",
            clientID=WI_APP,
            tokens=tokens,
        )
    assert info.value.kind is Kind.UNAUTHENTICATED


async def test_credential_and_client_reused_across_mounts(world: ProviderWorld) -> None:
    p = Provider(ContentOptions(), clouds.PUBLIC, Metrics())
    try:
        world.emulator.clear_requests()
        for _ in range(3):
            await mount(p, world, {"objectName": "plain", "objectType": "secret"})
        entra = [r for r in world.emulator.requests(service="entra") if "token" in r["path"]]
        assert len(entra) == 1 and p.clients.credentials_built == 1
    finally:
        await p.close()


async def test_not_found_names_object_and_vault(provider: Provider, world: ProviderWorld) -> None:
    with pytest.raises(ProviderError) as info:
        await mount(provider, world, {"objectName": "missing-one", "objectType": "secret"})
    assert info.value.kind is Kind.NOT_FOUND
    assert "missing-one" in info.value.message and world.vault in info.value.message
    assert info.value.message.startswith("failed to get objectType:secret, objectName:missing-one")


async def test_forbidden_hints_role(provider: Provider, world: ProviderWorld) -> None:
    secrets = {"clientid": SP_DENIED_ID, "clientsecret": SP_DENIED_SECRET}
    for object_type, role in (
        ("secret", "Key Vault Secrets User"),
        ("cert", "Key Vault Certificate User"),
        ("key", "Key Vault Crypto User"),
    ):
        name = {"secret": "plain", "cert": "rsa-pem", "key": "rsa-key"}[object_type]
        with pytest.raises(ProviderError) as info:
            await mount(
                provider, world, {"objectName": name, "objectType": object_type}, secrets=secrets
            )
        assert info.value.kind is Kind.PERMISSION_DENIED and role in info.value.message
        assert SP_DENIED_SECRET not in info.value.message


async def test_wrong_client_secret_is_unauthenticated(
    provider: Provider, world: ProviderWorld
) -> None:
    with pytest.raises(ProviderError) as info:
        await mount(
            provider,
            world,
            {"objectName": "plain", "objectType": "secret"},
            secrets={"clientid": SP_DENIED_ID, "clientsecret": "wrong-secret-xyz"},
        )
    assert info.value.kind is Kind.UNAUTHENTICATED and "wrong-secret-xyz" not in info.value.message


async def test_throttling_honours_retry_after_then_fails_clearly(world: ProviderWorld) -> None:
    p = Provider(
        ContentOptions(),
        clouds.PUBLIC,
        Metrics(),
        ClientCache(ClientOptions(retry_total=2, timeout=20)),
    )
    emu = world.emulator
    try:
        await mount(p, world, {"objectName": "plain", "objectType": "secret"})  # token cached
        emu.clear_requests()
        emu.add_fault(
            service="kv", vault=world.vault, path="/secrets/unicode", status=429, retry_after=1
        )
        start = time.monotonic()
        with pytest.raises(ProviderError) as info:
            await mount(p, world, {"objectName": "unicode", "objectType": "secret"})
        elapsed = time.monotonic() - start
        assert info.value.kind is Kind.UNAVAILABLE and "429" in info.value.message
        hits = [r for r in emu.requests(service="kv") if "/secrets/unicode" in r["path"]]
        assert len(hits) == 3  # one try, two retries
        assert elapsed >= 2.0  # Retry-After: 1 honoured twice
        emu.clear_faults()
        emu.add_fault(
            service="kv",
            vault=world.vault,
            path="/secrets/unicode",
            status=429,
            retry_after=1,
            count=1,
        )
        result = await mount(p, world, {"objectName": "unicode", "objectType": "secret"})
        assert result.files[0].contents == "h\u00e9llo \u2603".encode()
    finally:
        emu.clear_faults()
        await p.close()


async def test_vault_that_does_not_answer_times_out(world: ProviderWorld) -> None:
    p = Provider(
        ContentOptions(),
        clouds.PUBLIC,
        Metrics(),
        ClientCache(ClientOptions(retry_total=0, timeout=1.5)),
    )
    emu = world.emulator
    try:
        await mount(p, world, {"objectName": "plain", "objectType": "secret"})
        emu.add_fault(service="kv", vault=world.vault, path="/secrets/b64", delay_ms=10_000)
        start = time.monotonic()
        with pytest.raises(ProviderError) as info:
            # a regression must fail here, not hang the suite for the Retry-After/delay
            await asyncio.wait_for(
                mount(p, world, {"objectName": "b64", "objectType": "secret"}), 10
            )
        assert time.monotonic() - start < 5
        assert info.value.kind is Kind.DEADLINE_EXCEEDED and world.vault in info.value.message
    finally:
        emu.clear_faults()
        await p.close()


async def test_custom_cloud_from_environment_file(
    provider: Provider, world: ProviderWorld, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    from testbed.emulator import SP_READER_ID, SP_READER_SECRET

    env = tmp_path / "azurestackcloud.json"
    env.write_text(
        json.dumps(
            {
                "name": "AzureStackCloud",
                "activeDirectoryEndpoint": "https://login.custom-cloud.test/",
                "keyVaultEndpoint": "https://vault.custom-cloud.test/",
                "keyVaultDNSSuffix": "vault.custom-cloud.test",
                "resourceManagerEndpoint": "https://management.custom-cloud.test/",
            }
        )
    )
    world.emulator.clear_requests()
    a = attributes(
        vault="kv-custom",
        tenant=world.tenant,
        objects=objects_yaml({"objectName": "custom-secret", "objectType": "secret"}),
        cloudName="AzureStackCloud",
        cloudEnvFileName=str(env),
    )
    result = await provider.mount(
        json.dumps(a),
        json.dumps({"clientid": SP_READER_ID, "clientsecret": SP_READER_SECRET}),
        "420",
    )
    assert by_path(result) == {"custom-secret": b"custom-cloud-value"}


async def test_huge_retry_after_does_not_hang(world: ProviderWorld) -> None:
    p = Provider(ContentOptions(), clouds.PUBLIC, Metrics(), ClientCache(ClientOptions(timeout=2)))
    emu = world.emulator
    try:
        await mount(p, world, {"objectName": "plain", "objectType": "secret"})
        emu.add_fault(
            service="kv", vault=world.vault, path="/secrets/hexed", status=429, retry_after=3600
        )
        start = time.monotonic()
        with pytest.raises(ProviderError) as info:
            # a regression must fail here, not hang the suite for the Retry-After/delay
            await asyncio.wait_for(
                mount(p, world, {"objectName": "hexed", "objectType": "secret"}), 10
            )
        assert time.monotonic() - start < 5
        assert info.value.kind is Kind.DEADLINE_EXCEEDED
    finally:
        emu.clear_faults()
        await p.close()


async def test_client_cache_is_bounded(world: ProviderWorld) -> None:
    p = Provider(ContentOptions(), clouds.PUBLIC, Metrics(), ClientCache(max_identities=1))
    try:
        await mount(p, world, {"objectName": "plain", "objectType": "secret"})
        await mount(
            p,
            world,
            {"objectName": "plain", "objectType": "secret"},
            secrets="null",
            useVMManagedIdentity="true",
        )
        await mount(p, world, {"objectName": "plain", "objectType": "secret"})
        assert p.clients.credentials_built == 3 and len(p.clients._credentials) == 1
    finally:
        await p.close()


async def test_disabled_certificate(provider: Provider, world: ProviderWorld) -> None:
    """A disabled certificate: Key Vault refuses its secret (the private key), which is reported
    as disabled, never as a missing role, with no key material in the message. Its public
    halves stay readable (Key Vault serves a disabled certificate and key), as upstream writes
    them."""
    with pytest.raises(ProviderError) as info:
        await mount(
            provider,
            world,
            {"objectName": "plain", "objectType": "secret"},
            {"objectName": "cert-disabled", "objectType": "secret"},
        )
    err = info.value
    assert err.kind is Kind.FAILED_PRECONDITION, err.message
    assert "secret cert-disabled (its current version) is disabled in Key Vault" in err.message
    assert "PRIVATE" not in err.message and "BEGIN" not in err.message
    result = await mount(
        provider,
        world,
        {"objectName": "cert-disabled", "objectType": "cert"},
        {"objectName": "cert-disabled", "objectType": "key", "objectAlias": "cert-disabled.pub"},
    )
    files = by_path(result)
    assert files["cert-disabled"].startswith(b"-----BEGIN CERTIFICATE-----")
    assert files["cert-disabled.pub"].startswith(b"-----BEGIN PUBLIC KEY-----")
    assert all(b"PRIVATE" not in f for f in files.values())


async def test_disabled_version_is_not_reported_as_a_missing_role(
    provider: Provider, world: ProviderWorld
) -> None:
    with pytest.raises(ProviderError) as info:
        await mount(
            provider,
            world,
            {"objectName": "hist", "objectType": "secret", "objectVersion": world.history[2]},
        )
    assert info.value.kind is Kind.FAILED_PRECONDITION and "is disabled" in info.value.message


async def test_forged_token_does_not_ride_on_a_genuine_one(world: ProviderWorld) -> None:
    """A token with the genuine subject and key id but another key's signature, sent after a
    genuine token of that subject mounted: the provider must not reuse the genuine credential."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    forger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    forged_key = forger.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    p = Provider(ContentOptions(), clouds.PUBLIC, Metrics())
    plain = {"objectName": "plain", "objectType": "secret"}
    try:
        genuine = {"api://AzureADTokenExchange": workload_token()}
        result = await mount(p, world, plain, secrets="null", clientID=WI_APP, tokens=genuine)
        assert by_path(result) == {"plain": b"plain-value"}
        forged = {"api://AzureADTokenExchange": workload_token(key_pem=forged_key)}
        with pytest.raises(ProviderError) as info:
            await mount(p, world, plain, secrets="null", clientID=WI_APP, tokens=forged)
        assert info.value.kind is Kind.UNAUTHENTICATED, info.value.message
    finally:
        await p.close()


async def test_each_workload_token_is_exchanged_once(world: ProviderWorld) -> None:
    """The cost of keying on the exact token: one Entra request per distinct token (a pod's),
    none for a token already exchanged (the same pod's republishes and rotation ticks)."""
    p = Provider(ContentOptions(), clouds.PUBLIC, Metrics())
    plain = {"objectName": "plain", "objectType": "secret"}
    try:
        world.emulator.clear_requests()
        tokens = [
            {"api://AzureADTokenExchange": workload_token(lifetime=3600 + i)} for i in range(3)
        ]
        for token in tokens + tokens:
            await mount(p, world, plain, secrets="null", clientID=WI_APP, tokens=token)
        entra = [r for r in world.emulator.requests(service="entra") if "token" in r["path"]]
        assert len(entra) == 3
    finally:
        await p.close()


async def test_get_secret_sends_and_reads_what_the_sdk_operation_does(world: ProviderWorld) -> None:
    """Our Get Secret runs the SecretClient's pipeline without its generated operation: the
    same requests reach Key Vault, the same values come back, the same errors are raised."""
    credential = ClientSecretCredential(world.tenant, SP_ID, SP_SECRET)
    url = vault_url(world.vault)
    sdk = SecretClient(url, credential)
    ours = VaultClient(world.vault, url, credential, ClientOptions(timeout=10))

    def kv_requests() -> list[tuple[str, str, int]]:
        hits = world.emulator.requests(service="kv")
        world.emulator.clear_requests()
        return [(r["method"], r["path"], r["status"]) for r in hits]

    try:
        await sdk.get_secret("plain")  # both past the first challenge
        await ours.get_secret("plain", "")
        for name, version in (("plain", ""), ("unicode", ""), ("multi", V[1]), ("hist", "")):
            world.emulator.clear_requests()
            expected = await sdk.get_secret(name, version or None)
            theirs = kv_requests()
            got = await ours.get_secret(name, version)
            assert kv_requests() == theirs
            props = expected.properties
            assert (got.value, got.content_type, got.kid, got.version) == (
                expected.value,
                props.content_type or "",
                props.key_id or "",
                props.version or "",
            )
        with pytest.raises(ResourceNotFoundError):
            await sdk.get_secret("no-such-secret")
        with pytest.raises(ProviderError) as info:
            await ours.get_secret("no-such-secret", "")
        assert info.value.kind is Kind.NOT_FOUND
    finally:
        await asyncio.gather(sdk.close(), ours.close())
        await credential.close()
