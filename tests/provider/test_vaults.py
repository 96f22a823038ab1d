"""Several vaults in one SecretProviderClass (per-object `keyvaultName`): parsing, the bad-input
rows, version ids, the layout, and mounts through the real Azure SDK against the emulator."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest

from provider_azure import clouds
from provider_azure.auth import ClientCache
from provider_azure.errors import Kind, ProviderError
from provider_azure.fetch import ContentOptions, Fetcher
from provider_azure.keyvault import ClientOptions
from provider_azure.limits import MAX_VAULTS_PER_MOUNT
from provider_azure.metrics import Metrics
from provider_azure.parameters import parse_mount
from provider_azure.provider import Provider
from testbed.mount_attributes import SP_SECRETS, attributes, objects_yaml

from .conftest import SP_DENIED_ID, SP_DENIED_SECRET, ProviderWorld
from .test_fetch import MemoryVault

OTHER = "kv-ec2"  # resolved by tests/netns-hosts; seeded here only


def parse(*objects: dict[str, object], vault: str = "kv-test"):  # type: ignore[no-untyped-def]
    attrib = attributes(vault=vault, objects=objects_yaml(*objects))
    return parse_mount(json.dumps(attrib), json.dumps(SP_SECRETS), "420")


# ---- parsing and ids --------------------------------------------------------------------------


def test_object_vault_parsed_and_ids_stay_upstreams_for_the_spcs_vault() -> None:
    params = parse(
        {"objectName": "a", "objectType": "secret"},
        {"objectName": "b", "objectType": "secret", "keyvaultName": "KV-Test"},
        {"objectName": "c", "objectType": "key", "keyvaultName": "KV-Other"},
        {"objectName": "d", "objectType": "cert", "keyvaultName": "kv-other"},
    )
    a, b, c, d = params.objects
    assert (a.vault, b.vault, c.vault, d.vault) == ("", "KV-Test", "KV-Other", "kv-other")
    assert [o.version_id(params.vault_name) for o in params.objects] == [
        "secret/a",
        "secret/b",  # the SPC's own vault, in another case
        "key/c@kv-other",
        "cert/d@kv-other",
    ]
    assert params.other_vaults() == ["KV-Other"]
    assert params.url_of("kv-other") == "https://kv-other.vault.azure.net/"


def _too_many_vaults() -> list[dict[str, object]]:
    return [
        {"objectName": f"s{i}", "objectType": "secret", "keyvaultName": f"kv-n{i}"}
        for i in range(MAX_VAULTS_PER_MOUNT)
    ]


# (objects, words the message must carry)
BAD_INPUT = [
    ([{"objectName": "s", "objectType": "secret", "keyvaultName": "kv"}], ["objects[0] (s)"]),
    ([{"objectName": "s", "objectType": "secret", "keyvaultName": "k" * 25}], ["3-24"]),
    ([{"objectName": "s", "objectType": "secret", "keyvaultName": "kv_bad"}], ["kv_bad"]),
    (
        [{"objectName": "s", "objectType": "secret", "keyvaultName": "kv.evil.com"}],
        ["[-a-zA-Z0-9]"],
    ),
    ([{"objectName": "s", "objectType": "secret", "keyvaultName": ["kv-a"]}], ["scalar"]),
    (_too_many_vaults(), [f"{MAX_VAULTS_PER_MOUNT + 1} distinct vaults", "at most 10"]),
    (
        [
            {"objectName": "s", "objectType": "secret"},
            {"objectName": "s", "objectType": "secret", "keyvaultName": "kv-other"},
        ],
        ["both write the file 's'", "objectAlias"],
    ),
]


@pytest.mark.parametrize(("objects", "words"), BAD_INPUT)
def test_bad_input(objects: list[dict[str, object]], words: list[str]) -> None:
    with pytest.raises(ProviderError) as info:
        parse(*objects)
    err = info.value
    assert err.kind is Kind.INVALID_ARGUMENT
    assert err.reason in ("keyvaultName", "objectAlias")
    for word in words:
        assert word in err.message, err.message


def test_the_spcs_vault_counts_toward_the_limit() -> None:
    """Nine other vaults and the SPC's make ten: accepted; the objects' alone would be too."""
    objects = _too_many_vaults()[:-1]
    assert len(parse(*objects).other_vaults()) == MAX_VAULTS_PER_MOUNT - 1
    objects.append({"objectName": "x", "objectType": "secret", "keyvaultName": "kv-n-last"})
    with pytest.raises(ProviderError, match="distinct vaults"):
        parse(*objects)


def test_long_vault_name_is_cut_in_the_message() -> None:
    with pytest.raises(ProviderError) as info:
        parse({"objectName": "s", "objectType": "secret", "keyvaultName": "v" * 5000})
    assert "(5000 chars)" in info.value.message and "v" * 100 not in info.value.message


# ---- fetching from several vaults, in memory --------------------------------------------------


def _two_vaults() -> tuple[MemoryVault, MemoryVault]:
    home, other = MemoryVault(), MemoryVault()
    other.vault_name = "kv-other"
    home.add("s", "home-value")
    other.add("s", "other-value")
    for i in range(3):
        other.add("h", f"h{i}")
    return home, other


def test_each_object_read_from_its_vault_with_its_id() -> None:
    home, other = _two_vaults()
    params = parse(
        {"objectName": "s", "objectType": "secret"},
        {"objectName": "s", "objectType": "secret", "keyvaultName": "KV-other", "objectAlias": "o"},
        {
            "objectName": "h",
            "objectType": "secret",
            "keyvaultName": "kv-other",
            "objectVersionHistory": 2,
        },
    )
    result = asyncio.run(Fetcher(ContentOptions()).mount(params, home, {"kv-other": other}))
    assert [(f.path, f.contents) for f in result.files] == [
        ("s", b"home-value"),
        ("o", b"other-value"),
        ("h/0", b"h2"),
        ("h/1", b"h1"),
        ("h/2", b"h0"),
    ]
    assert [v.id for v in result.object_versions] == [
        "secret/s",
        "secret/s@kv-other",
        "secret/h@kv-other/0",
        "secret/h@kv-other/1",
        "secret/h@kv-other/2",
    ]
    assert home.calls == [("secret", "s", "")]
    assert sorted(other.calls) == [
        ("list", "h", ""),
        ("secret", "h", "v1"),
        ("secret", "h", "v2"),
        ("secret", "h", "v3"),
        ("secret", "s", ""),
    ]


def test_in_flight_sharing_never_crosses_vaults() -> None:
    """Concurrent mounts share a GET in flight only within one vault: the same object name
    read at the same moment from two vaults is two GETs, each with its own vault's value."""
    home, other = _two_vaults()
    fetcher = Fetcher(ContentOptions())
    in_home = parse({"objectName": "s", "objectType": "secret"})
    in_other = parse({"objectName": "s", "objectType": "secret", "keyvaultName": "kv-other"})

    async def both():  # type: ignore[no-untyped-def]
        return await asyncio.gather(
            fetcher.mount(in_home, home),
            fetcher.mount(in_other, home, {"kv-other": other}),
            fetcher.mount(in_home, home),
        )

    a, b, c = asyncio.run(both())
    assert [f.contents for r in (a, b, c) for f in r.files] == [
        b"home-value",
        b"other-value",
        b"home-value",
    ]
    assert home.calls == other.calls == [("secret", "s", "")]  # the third shared the first


# ---- through the real Azure SDK, against the emulator -----------------------------------------


@pytest.fixture(scope="module")
def other_vault(world: ProviderWorld) -> str:
    world.emulator.seed(
        {
            "vaults": [
                {
                    "name": OTHER,
                    "tenant": world.tenant,
                    "roleAssignments": [{"identity": "prov-sp", "role": "Key Vault Secrets User"}],
                    "secrets": [
                        {"name": "plain", "value": "plain-in-ec2"},
                        {"name": "only-here", "value": "only-here-value"},
                    ],
                }
            ]
        }
    )
    return OTHER


@pytest.fixture
async def provider() -> AsyncIterator[Provider]:
    p = Provider(ContentOptions(), clouds.PUBLIC, Metrics(), ClientCache(ClientOptions(timeout=10)))
    yield p
    await p.close()


async def _mount(
    provider: Provider, world: ProviderWorld, *objects: dict[str, object], secrets: object = None
):  # type: ignore[no-untyped-def]
    a = attributes(vault=world.vault, objects=objects_yaml(*objects), tenant=world.tenant)
    s = json.dumps(world.secrets if secrets is None else secrets)
    return await provider.mount(json.dumps(a), s, "420")


async def test_two_vaults_through_the_sdk(
    provider: Provider, world: ProviderWorld, other_vault: str
) -> None:
    world.emulator.clear_requests()
    result = await _mount(
        provider,
        world,
        {"objectName": "plain", "objectType": "secret"},
        {
            "objectName": "plain",
            "objectType": "secret",
            "keyvaultName": other_vault,
            "objectAlias": "plain-ec2",
        },
        {"objectName": "only-here", "objectType": "secret", "keyvaultName": other_vault.upper()},
    )
    assert [(f.path, f.contents) for f in result.files] == [
        ("plain", b"plain-value"),
        ("plain-ec2", b"plain-in-ec2"),
        ("only-here", b"only-here-value"),
    ]
    ids = [v.id for v in result.object_versions]
    assert ids == ["secret/plain", f"secret/plain@{other_vault}", f"secret/only-here@{other_vault}"]
    gets = {(r["vault"], r["path"]) for r in world.emulator.requests(service="kv", method="GET")}
    assert (other_vault, "/secrets/only-here/") in gets or (
        other_vault,
        "/secrets/only-here",
    ) in gets
    # one credential for the identity, one client per vault
    assert provider.clients.credentials_built == 1
    assert len(provider.clients._clients) == 2


async def test_not_found_in_the_other_vault_names_it(
    provider: Provider, world: ProviderWorld, other_vault: str
) -> None:
    with pytest.raises(ProviderError) as info:
        await _mount(
            provider,
            world,
            {"objectName": "multi", "objectType": "secret", "keyvaultName": other_vault},
        )
    assert info.value.kind is Kind.NOT_FOUND
    assert f"not found in Key Vault {other_vault}" in info.value.message


async def test_no_role_in_the_other_vault_names_the_role(
    provider: Provider, world: ProviderWorld, other_vault: str
) -> None:
    """prov-sp has no certificate role on kv-ec2 (it has every role on kv-ec)."""
    with pytest.raises(ProviderError) as info:
        await _mount(
            provider,
            world,
            {"objectName": "plain", "objectType": "secret"},
            {"objectName": "anything", "objectType": "cert", "keyvaultName": other_vault},
        )
    assert info.value.kind is Kind.PERMISSION_DENIED
    assert other_vault in info.value.message and "Key Vault Certificate User" in info.value.message
    with pytest.raises(ProviderError) as info:
        await _mount(
            provider,
            world,
            {"objectName": "plain", "objectType": "secret", "keyvaultName": other_vault},
            secrets={"clientid": SP_DENIED_ID, "clientsecret": SP_DENIED_SECRET},
        )
    assert info.value.kind is Kind.PERMISSION_DENIED and other_vault in info.value.message
