"""JSON keys (`jmesPath`): parsing, every bad-input row, the files written, and a mount through
the real Azure SDK against the emulator."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest

from provider_azure import clouds
from provider_azure.auth import ClientCache
from provider_azure.errors import Kind, ProviderError
from provider_azure.fetch import ContentOptions, Fetcher, MountResult
from provider_azure.keyvault import ClientOptions
from provider_azure.limits import MAX_JSON_DEPTH, MAX_JSON_KEYS, MAX_JSON_PATH, MAX_JSON_TEXT
from provider_azure.metrics import Metrics
from provider_azure.parameters import parse_mount
from provider_azure.provider import Provider
from testbed.mount_attributes import SP_SECRETS, attributes, objects_yaml

from .conftest import ProviderWorld
from .test_fetch import MemoryVault

DB = {"username": "app", "password": "s3cr3t-pw", "port": 5432, "tls": {"ca": "CA-PEM"}}


def keys(*pairs: tuple[str, str]) -> list[dict[str, str]]:
    return [{"path": p, "objectAlias": a} for p, a in pairs]


def obj(**fields: object) -> dict[str, object]:
    return {"objectName": "db", "objectType": "secret", **fields}


def parse(*objects: dict[str, object]):  # type: ignore[no-untyped-def]
    attrib = attributes(objects=objects_yaml(*objects))
    return parse_mount(json.dumps(attrib), json.dumps(SP_SECRETS), "420")


def test_aws_shape_parses() -> None:
    text = (
        "array:\n  - |\n    objectName: db\n    objectType: secret\n    jmesPath:\n"
        "      - path: username\n        objectAlias: db-user\n"
        "      - path: '\"database-url\"'\n        objectAlias: conf/url\n"
    )
    attrib = attributes(objects=text)
    (db,) = parse_mount(json.dumps(attrib), json.dumps(SP_SECRETS), "420").objects
    assert [(k.path, k.alias) for k in db.json_keys] == [
        ("username", "db-user"),
        ('"database-url"', "conf/url"),
    ]
    assert db.file_name == "db" and db.uid == "secret/db"


# (object fields, words the message must carry); every row is InvalidArgument, reason jmesPath
# unless the file-name rules answer (reason objectAlias).
BAD_INPUT = [
    (obj(jmesPath="username"), ["jmesPath must be a non-empty list"]),
    (obj(jmesPath=[]), ["jmesPath must be a non-empty list"]),
    (obj(jmesPath=["username"]), ["jmesPath[0]: needs both path and objectAlias"]),
    (obj(jmesPath=[{"path": "username"}]), ["jmesPath[0]: needs both"]),
    (obj(jmesPath=[{"objectAlias": "u"}]), ["jmesPath[0]: needs both"]),
    (obj(jmesPath=[{"path": ["a"], "objectAlias": "u"}]), ["path must be a string"]),
    (
        obj(jmesPath=keys(*((f"k{i}", f"f{i}") for i in range(MAX_JSON_KEYS + 1)))),
        [f"{MAX_JSON_KEYS + 1} entries, at most {MAX_JSON_KEYS}"],
    ),
    (obj(jmesPath=keys(("a" * (MAX_JSON_PATH + 1), "u"))), ["(257 chars)", "longer than 256"]),
    (obj(jmesPath=keys(("a[", "u"))), ["'a[' is not a valid JMESPath expression"]),
    (obj(jmesPath=keys(("length(a)", "u"))), ["only names", "function_expression"]),
    (obj(jmesPath=keys(("a[*].b", "u"))), ["only names", "projection"]),
    (obj(jmesPath=keys(("a | b", "u"))), ["only names", "pipe"]),
    (obj(jmesPath=keys(("[a, b]", "u"))), ["only names", "multi_select_list"]),
    (obj(jmesPath=keys(("a[?b=='c']", "u"))), ["only names", "filter_projection"]),
    (obj(jmesPath=keys(("a", "/etc/passwd"))), ["jmesPath[0]", "must be a relative path"]),
    (obj(jmesPath=keys(("a", "../up"))), ["jmesPath[0]", "must not contain '..'"]),
    (obj(jmesPath=keys(("a", "db"))), ["jmesPath[0] and objects[0] (db)'s own file both write"]),
    (obj(jmesPath=keys(("a", "db/x"))), ["jmesPath[0] writes 'db/x' under"]),
    (obj(jmesPath=keys(("a", "x"), ("b", "x"))), ["jmesPath[1] and objects[0] (db) jmesPath[0]"]),
    (obj(objectType="key", jmesPath=keys(("a", "u"))), ["only supported for objectType: secret"]),
    (obj(objectEncoding="base64", jmesPath=keys(("a", "u"))), ["as text"]),
    (obj(objectFormat="pfx", jmesPath=keys(("a", "u"))), ["objectFormat: pfx"]),
    (obj(objectVersionHistory=2, jmesPath=keys(("a", "u"))), ["objectVersionHistory"]),
]


@pytest.mark.parametrize(("fields", "words"), BAD_INPUT)
def test_bad_input(fields: dict[str, object], words: list[str]) -> None:
    with pytest.raises(ProviderError) as info:
        parse(fields)
    err = info.value
    assert err.kind is Kind.INVALID_ARGUMENT
    assert err.reason in ("jmesPath", "objectAlias")
    assert "objects[0] (db)" in err.message
    for word in words:
        assert word in err.message, err.message


def test_alias_clashing_with_another_objects_file() -> None:
    with pytest.raises(ProviderError) as info:
        parse(
            obj(jmesPath=keys(("username", "other"))),
            {"objectName": "other", "objectType": "secret"},
        )
    assert (
        "objects[1] (other) and objects[0] (db) both write the file 'other'" in info.value.message
    )


# ---- the files, on an in-memory vault ---------------------------------------------------------


def mount(vault: MemoryVault, *objects: dict[str, object]) -> MountResult:
    return asyncio.run(Fetcher(ContentOptions()).mount(parse(*objects), vault))


def test_each_path_its_own_file_after_the_objects_own() -> None:
    vault = MemoryVault()
    vault.add("db", json.dumps(DB))
    result = mount(
        vault,
        obj(
            filePermission="0440",
            jmesPath=keys(("username", "db-user"), ("tls.ca", "tls/ca.pem"), ('"password"', "pw")),
        ),
    )
    assert [(f.path, f.contents, f.mode) for f in result.files] == [
        ("db", json.dumps(DB).encode(), 0o440),
        ("db-user", b"app", 0o440),
        ("tls/ca.pem", b"CA-PEM", 0o440),
        ("pw", b"s3cr3t-pw", 0o440),
    ]
    assert {(v.id, v.version) for v in result.object_versions} == {("secret/db", "v1")}
    assert vault.calls == [("secret", "db", "")]


@pytest.mark.parametrize(
    ("value", "path", "words"),
    [
        ("not json at all", "a", ["not JSON (Expecting value at char 0)"]),
        ("", "a", ["not JSON"]),
        (json.dumps(DB), "nope", ["path 'nope' matches nothing"]),
        (json.dumps(DB), "port", ["path 'port' gives a number, not a string"]),
        (json.dumps(DB), "tls", ["path 'tls' gives an object"]),
        (json.dumps({**DB, "a": [1]}), "a", ["gives a list"]),
        (json.dumps({**DB, "a": True}), "a", ["gives a boolean"]),
        (json.dumps({**DB, "a": None}), "a", ["path 'a' matches nothing"]),
        (json.dumps({**DB, "a": "x" * MAX_JSON_TEXT}), "a", [f"at most {MAX_JSON_TEXT}"]),
        ("[" * (MAX_JSON_DEPTH + 1) + "]" * (MAX_JSON_DEPTH + 1), "a", ["nested deeper than 64"]),
        ("[" * 100_000 + "]" * 100_000, "a", ["at most"]),
        ("[" * 10_000 + "]" * 10_000, "a", ["nested deeper than 64"]),
    ],
)
def test_bad_values_refuse_the_mount(value: str, path: str, words: list[str]) -> None:
    """Nothing is written: the mount fails as a whole, naming the object and the path, and
    quotes no part of the value."""
    vault = MemoryVault()
    vault.add("db", value)
    with pytest.raises(ProviderError) as info:
        mount(vault, obj(jmesPath=keys(("username", "u"), (path, "v"))))
    err = info.value
    assert err.kind is Kind.INVALID_ARGUMENT and err.reason == "jmesPath"
    assert "objects[0] (db)" in err.message
    for word in words:
        assert word in err.message, err.message
    for secret in ("s3cr3t-pw", "not json at all", "xxxx"):
        assert secret not in err.message


def test_depth_limit_is_exact() -> None:
    vault = MemoryVault()
    deep: object = "leaf"
    for _ in range(MAX_JSON_DEPTH):
        deep = {"a": deep}
    vault.add("db", json.dumps(deep))
    result = mount(vault, obj(jmesPath=keys((".".join(["a"] * MAX_JSON_DEPTH), "leaf"))))
    assert result.files[-1].contents == b"leaf"


# ---- through the real Azure SDK, against the emulator -----------------------------------------


@pytest.fixture
async def provider() -> AsyncIterator[Provider]:
    p = Provider(ContentOptions(), clouds.PUBLIC, Metrics(), ClientCache(ClientOptions(timeout=10)))
    yield p
    await p.close()


async def test_json_keys_through_the_sdk(provider: Provider, world: ProviderWorld) -> None:
    version = world.emulator.set_secret(world.vault, "json-db", json.dumps(DB))
    a = attributes(
        vault=world.vault,
        tenant=world.tenant,
        objects=objects_yaml(
            {
                "objectName": "json-db",
                "objectType": "secret",
                "jmesPath": keys(("username", "db-user"), ("password", "db-password")),
            },
            {"objectName": "plain", "objectType": "secret"},
        ),
    )
    result = await provider.mount(json.dumps(a), json.dumps(world.secrets), "420")
    assert [(f.path, f.contents) for f in result.files] == [
        ("json-db", json.dumps(DB).encode()),
        ("db-user", b"app"),
        ("db-password", b"s3cr3t-pw"),
        ("plain", b"plain-value"),
    ]
    assert ("secret/json-db", version) in {(v.id, v.version) for v in result.object_versions}

    a["objects"] = objects_yaml(
        {"objectName": "plain", "objectType": "secret", "jmesPath": keys(("a", "b"))}
    )
    with pytest.raises(ProviderError) as info:
        await provider.mount(json.dumps(a), json.dumps(world.secrets), "420")
    assert info.value.kind is Kind.INVALID_ARGUMENT
    assert "objects[0] (plain): jmesPath: the value is not JSON" in info.value.message
    assert "plain-value" not in info.value.message
