"""Selections (`objectNamePattern`, `objectTags`): the glob, every bad-input row, the files a
selection writes as matches come and go, and mounts through the real Azure SDK."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from csi_driver import atomic_writer
from provider_azure import clouds
from provider_azure.auth import ClientCache
from provider_azure.errors import Kind, ProviderError
from provider_azure.fetch import ContentOptions, Fetcher, MountResult
from provider_azure.keyvault import ROLE_HINTS, ClientOptions, ObjectInfo
from provider_azure.limits import MAX_PATTERN, MAX_SELECTED, MAX_TAG_NAME, MAX_TAG_VALUE, MAX_TAGS
from provider_azure.metrics import Metrics
from provider_azure.parameters import parse_mount
from provider_azure.provider import Provider
from provider_azure.selection import Selection, glob_match
from testbed.mount_attributes import SP_SECRETS, attributes, objects_yaml

from .conftest import SP_DENIED_ID, SP_DENIED_SECRET, ProviderWorld
from .test_fetch import MemoryVault


def parse(*objects: dict[str, object]):  # type: ignore[no-untyped-def]
    attrib = attributes(objects=objects_yaml(*objects))
    return parse_mount(json.dumps(attrib), json.dumps(SP_SECRETS), "420")


def sel(**fields: object) -> dict[str, object]:
    return {"objectType": "secret", **fields}


# ---- the glob -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "name", "expected"),
    [
        ("*", "anything", True),
        ("db-*", "db-password", True),
        ("db-*", "app-db-password", False),  # whole name
        ("*-password", "db-password", True),
        ("db-?", "db-1", True),
        ("db-?", "db-10", False),
        ("a*b*c", "aXXbYYc", True),
        ("a*b*c", "aXXbYY", False),
        ("a**", "a", True),
        ("abc", "abc", True),
        ("abc", "abcd", False),
    ],
)
def test_glob(pattern: str, name: str, expected: bool) -> None:
    assert glob_match(pattern, name) is expected


def test_glob_ignores_case_and_cannot_blow_up() -> None:
    assert Selection(pattern="DB-*").matches("db-Password", None)
    pattern = "*a" * 60 + "*b"
    start = time.perf_counter()
    assert not glob_match(pattern, "a" * 127)
    assert time.perf_counter() - start < 0.5


def test_tags_all_must_match_exactly() -> None:
    s = Selection(tags=(("app", "web"), ("env", "prod")))
    assert s.matches("x", {"app": "web", "env": "prod", "team": "a"})
    assert not s.matches("x", {"app": "web"})
    assert not s.matches("x", {"app": "web", "env": "Prod"})
    assert not s.matches("x", None)


def test_selection_parses() -> None:
    params = parse(
        sel(objectNamePattern="db-*", objectTags={"app": "web"}, filePermission="0400"),
        {"objectName": "plain", "objectType": "secret"},
    )
    entry = params.objects[0]
    assert entry.selection == Selection("db-*", (("app", "web"),))
    assert entry.name == "" and entry.file_permission == 0o400
    assert entry.label() == "objects[0] (selection: objectNamePattern db-* and 1 objectTags)"


# (fields, reason, words); every row is InvalidArgument naming `objects[0] (selection)`
BAD_INPUT = [
    (sel(objectNamePattern="db-.*"), "objectNamePattern", ["'db-.*' must be 1-127 characters"]),
    (sel(objectNamePattern="d" * (MAX_PATTERN + 1)), "objectNamePattern", ["(128 chars)"]),
    (sel(objectNamePattern=""), "objectNamePattern", ["needs a non-empty objectNamePattern"]),
    (sel(objectTags={}), "objectNamePattern", ["needs a non-empty"]),
    (sel(objectTags=["app"]), "objectTags", ["objectTags must be a map"]),
    (sel(objectTags={"app": ["web"]}), "objectTags", ["objectTags must be a map"]),
    (
        sel(objectTags={f"t{i}": "v" for i in range(MAX_TAGS + 1)}),
        "objectTags",
        ["16 tags, at most 15"],
    ),
    (sel(objectTags={"t" * (MAX_TAG_NAME + 1): "v"}), "objectTags", ["(513 chars)"]),
    (sel(objectTags={"t": "v" * (MAX_TAG_VALUE + 1)}), "objectTags", ["at most 256"]),
    (sel(objectTags={"": "v"}), "objectTags", ["a tag name is 1-512"]),
    (sel(objectNamePattern="db-*", objectName="db"), "objectName", ["objectName cannot be used"]),
    (sel(objectNamePattern="*", objectAlias="x"), "objectAlias", ["objectAlias cannot be used"]),
    (sel(objectNamePattern="*", objectVersion="abc"), "objectVersion", ["objectVersion cannot"]),
    (
        sel(objectNamePattern="*", objectVersionHistory=2),
        "objectVersionHistory",
        ["objectVersionHistory cannot"],
    ),
    (
        sel(objectNamePattern="*", jmesPath=[{"path": "a", "objectAlias": "b"}]),
        "jmesPath",
        ["jmesPath cannot be used with a selection"],
    ),
    ({"objectNamePattern": "*"}, "objectType", ["invalid objectType ''"]),
    (sel(objectNamePattern="*", keyvaultName="kv"), "keyvaultName", ["keyvaultName 'kv'"]),
    (sel(objectNamePattern="*", objectFormat="pfx", objectType="cert"), "objectFormat", ["PFX"]),
]


@pytest.mark.parametrize(("fields", "reason", "words"), BAD_INPUT)
def test_bad_input(fields: dict[str, object], reason: str, words: list[str]) -> None:
    with pytest.raises(ProviderError) as info:
        parse(fields)
    err = info.value
    assert (err.kind, err.reason) == (Kind.INVALID_ARGUMENT, reason)
    assert "objects[0] (selection)" in err.message
    for word in words:
        assert word in err.message, err.message


# ---- the files, on an in-memory vault -----------------------------------------------------


class ListingVault(MemoryVault):
    def __init__(self) -> None:
        super().__init__()
        self.tags: dict[str, dict[str, str]] = {}
        self.listings = 0

    def put(self, name: str, value: str, enabled: bool = True, **tags: str) -> None:
        self.add(name, value, enabled=enabled)
        self.tags[name] = tags

    async def list_objects(self, object_type: str) -> list[ObjectInfo]:
        self.listings += 1
        return [
            ObjectInfo(name, versions[-1][2], self.tags.get(name, {}))
            for name, versions in reversed(self.secrets.items())
        ]


def mount(vault: MemoryVault, *objects: dict[str, object]) -> MountResult:
    return asyncio.run(Fetcher(ContentOptions()).mount(parse(*objects), vault))


def _vault() -> ListingVault:
    vault = ListingVault()
    vault.put("db-password", "pw", app="web")
    vault.put("db-user", "user", app="web", env="prod")
    vault.put("DB-host", "host", app="api")
    vault.put("db-old", "old", enabled=False, app="web")
    vault.put("cache-url", "redis", app="web")
    return vault


def test_matches_written_under_their_names_with_the_entrys_settings() -> None:
    vault = _vault()
    result = mount(vault, sel(objectNamePattern="db-*", filePermission="0400"))
    assert [(f.path, f.contents, f.mode) for f in result.files] == [
        ("DB-host", b"host", 0o400),  # sorted without case; disabled db-old left out
        ("db-password", b"pw", 0o400),
        ("db-user", b"user", 0o400),
    ]
    assert [v.id for v in result.object_versions] == [
        "secret/DB-host",
        "secret/db-password",
        "secret/db-user",
    ]
    assert vault.listings == 1


def test_tags_and_pattern_together() -> None:
    vault = _vault()
    result = mount(vault, sel(objectNamePattern="db-*", objectTags={"app": "web"}))
    assert [f.path for f in result.files] == ["db-password", "db-user"]
    result = mount(vault, sel(objectTags={"app": "web", "env": "prod"}))
    assert [f.path for f in result.files] == ["db-user"]


def test_clash_with_another_objects_file_is_refused() -> None:
    vault = _vault()
    with pytest.raises(ProviderError) as info:
        mount(
            vault,
            {"objectName": "cache-url", "objectType": "secret", "objectAlias": "db-user"},
            sel(objectNamePattern="db-*"),
        )
    assert info.value.kind is Kind.INVALID_ARGUMENT
    assert "objects[1] (db-user) and objects[0] (cache-url) both write the file 'db-user'" in (
        info.value.message
    )


def test_too_many_matches() -> None:
    vault = ListingVault()
    for i in range(MAX_SELECTED + 1):
        vault.put(f"s{i:03d}", "v")
    with pytest.raises(ProviderError) as info:
        mount(vault, sel(objectNamePattern="s*"))
    assert info.value.kind is Kind.FAILED_PRECONDITION
    assert f"{MAX_SELECTED + 1} objects match, at most {MAX_SELECTED}" in info.value.message
    assert vault.calls == []  # nothing fetched
    assert len(mount(vault, sel(objectNamePattern="s0*")).files) == 100


def test_no_match_is_fine_beside_named_objects_but_not_alone() -> None:
    vault = _vault()
    result = mount(
        vault,
        sel(objectNamePattern="nothing-*"),
        {"objectName": "cache-url", "objectType": "secret"},
    )
    assert [f.path for f in result.files] == ["cache-url"]
    with pytest.raises(ProviderError) as info:
        mount(vault, sel(objectNamePattern="nothing-*"))
    assert info.value.kind is Kind.NOT_FOUND
    assert (
        "no object matches the selections (objects[0] (selection: objectNamePattern nothing-*))"
        in info.value.message
    )


def test_rotation_adds_and_removes_files(tmp_path: Path) -> None:
    """Each Mount answers the current matches; the driver's atomic writer replaces the whole
    file set, so a match that disappeared leaves no file behind."""
    vault = _vault()
    target = tmp_path / "volume"
    target.mkdir()

    def publish() -> list[str]:
        result = mount(vault, sel(objectTags={"app": "web"}))
        atomic_writer.write(
            str(target),
            {f.path: atomic_writer.FileProjection(f.contents, f.mode) for f in result.files},
        )
        return sorted(p.name for p in target.iterdir() if not p.name.startswith(".."))

    assert publish() == ["cache-url", "db-password", "db-user"]
    vault.put("new-one", "n", app="web")
    vault.add("db-password", "pw2", enabled=False)  # its current version disabled
    assert publish() == ["cache-url", "db-user", "new-one"]
    assert (target / "new-one").read_bytes() == b"n"


# ---- through the real Azure SDK, against the emulator -------------------------------------


@pytest.fixture
async def provider() -> AsyncIterator[Provider]:
    p = Provider(ContentOptions(), clouds.PUBLIC, Metrics(), ClientCache(ClientOptions(timeout=10)))
    yield p
    await p.close()


async def _mount(
    provider: Provider, world: ProviderWorld, *objects: dict[str, object], secrets: object = None
) -> MountResult:
    a = attributes(vault=world.vault, objects=objects_yaml(*objects), tenant=world.tenant)
    s = json.dumps(world.secrets if secrets is None else secrets)
    return await provider.mount(json.dumps(a), s, "420")


async def test_selection_through_the_sdk(provider: Provider, world: ProviderWorld) -> None:
    emu = world.emulator
    emu.set_secret(world.vault, "sel-a", "A", tags={"team": "pay"})
    emu.set_secret(world.vault, "sel-b", "B", tags={"team": "pay", "env": "prod"})
    off = emu.set_secret(world.vault, "sel-off", "OFF", tags={"team": "pay"})
    emu.set_secret_enabled(world.vault, "sel-off", off, False)
    emu.set_secret(world.vault, "other-c", "C", tags={"team": "pay"})
    result = await _mount(provider, world, sel(objectNamePattern="sel-*", filePermission="0440"))
    assert [(f.path, f.contents, f.mode) for f in result.files] == [
        ("sel-a", b"A", 0o440),
        ("sel-b", b"B", 0o440),
    ]
    result = await _mount(provider, world, sel(objectTags={"team": "pay"}))
    assert [f.path for f in result.files] == ["other-c", "sel-a", "sel-b"]
    assert [v.id for v in result.object_versions] == [
        "secret/other-c",
        "secret/sel-a",
        "secret/sel-b",
    ]
    result = await _mount(provider, world, sel(objectTags={"team": "pay", "env": "prod"}))
    assert [f.path for f in result.files] == ["sel-b"]
    # a new match appears on the next mount, a disabled one goes
    emu.set_secret(world.vault, "sel-d", "D")
    b = emu.set_secret(world.vault, "sel-b", "B2", tags={"team": "pay"})
    emu.set_secret_enabled(world.vault, "sel-b", b, False)
    result = await _mount(provider, world, sel(objectNamePattern="SEL-?"))
    assert [f.path for f in result.files] == ["sel-a", "sel-d"]


async def test_selection_of_keys_and_certs(provider: Provider, world: ProviderWorld) -> None:
    result = await _mount(
        provider,
        world,
        sel(objectType="key", objectNamePattern="ec-*"),
        sel(objectType="cert", objectNamePattern="rsa-p*"),
    )
    assert [f.path for f in result.files] == [
        "ec-256",
        "ec-384",
        "ec-521",
        "ec-pem",  # a certificate's key is a key: Key Vault lists it
        "ec-pfx",
        "rsa-pem",
        "rsa-pfx",
    ]
    assert result.files[0].contents.startswith(b"-----BEGIN PUBLIC KEY-----")
    assert result.files[-1].contents.startswith(b"-----BEGIN CERTIFICATE-----")


async def test_no_list_permission_names_the_role(provider: Provider, world: ProviderWorld) -> None:
    with pytest.raises(ProviderError) as info:
        await _mount(
            provider,
            world,
            sel(objectNamePattern="*"),
            secrets={"clientid": SP_DENIED_ID, "clientsecret": SP_DENIED_SECRET},
        )
    err = info.value
    assert err.kind is Kind.PERMISSION_DENIED
    assert err.message.startswith(
        "objects[0] (selection: objectNamePattern *): listing the secrets of Key Vault kv-ec "
        "failed: access to Key Vault kv-ec denied (403)"
    )
    assert ROLE_HINTS["secret"] in err.message and world.vault in err.message
