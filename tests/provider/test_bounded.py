"""Bounded by construction: no Mount request makes the provider stall, grow or echo without limit.

One test per row of the issue (work, echo, caches, depth, the emulator's hung identity services,
aliases), against the real Azure SDK and the emulator where a row involves them, and a property
test over random requests.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import AsyncIterator

import grpc
import pytest

from provider_azure import clouds, fetch, keyvault, limits
from provider_azure.auth import ClientCache
from provider_azure.errors import Kind, ProviderError
from provider_azure.fetch import ContentOptions
from provider_azure.keyvault import ClientOptions
from provider_azure.metrics import MAX_SERIES, Metrics
from provider_azure.objects import PARSED_OBJECTS, parse_objects
from provider_azure.parameters import parse_mount
from provider_azure.provider import Provider
from provider_azure.server import ProviderServicer
from secrets_store_api import provider_pb2, provider_pb2_grpc
from testbed.mount_attributes import SP_SECRETS, attributes, objects_yaml

from .conftest import ProviderWorld

SECRET_OBJECT = {"objectName": "s", "objectType": "secret"}


def refused(attrib: dict[str, str] | str, secrets: str = json.dumps(SP_SECRETS)) -> ProviderError:
    text = attrib if isinstance(attrib, str) else json.dumps(attrib)
    with pytest.raises(ProviderError) as info:
        parse_mount(text, secrets, "420")
    err = info.value
    assert err.kind is Kind.INVALID_ARGUMENT, err.message
    assert len(err.message) <= limits.MAX_MESSAGE
    return err


def history(n: int | str, name: str = "hist") -> str:
    return objects_yaml({"objectName": name, "objectType": "secret", "objectVersionHistory": n})


@pytest.fixture
async def provider() -> AsyncIterator[Provider]:
    p = Provider(
        ContentOptions(),
        clouds.PUBLIC,
        Metrics(),
        ClientCache(ClientOptions(retry_total=0, timeout=10)),
    )
    yield p
    await p.close()


async def mount(provider: Provider, world: ProviderWorld, objects: str, **extra: str) -> object:
    a = attributes(vault=world.vault, objects=objects, tenant=world.tenant, **extra)
    secrets = extra.pop("_secrets", None) or json.dumps(world.secrets)
    return await provider.mount(json.dumps(a), secrets, "420")


# Row 1: work bounded (no quadratic check, no enumeration of objectVersionHistory).


def test_version_history_is_never_enumerated() -> None:
    start = time.perf_counter()
    (obj,) = parse_objects(history(2**31 - 1, "billions"))
    assert obj.version_history == 2**31 - 1
    assert time.perf_counter() - start < 1.0, "the history's paths were enumerated"


def test_version_history_past_int32_is_refused() -> None:
    err = refused(attributes(objects=history(2**31)))
    assert "objectVersionHistory is too large" in err.message and "objects[0]" in err.message
    err = refused(attributes(objects=history("9" * 5000)))
    assert "objectVersionHistory must be an integer" in err.message


async def test_a_billion_versions_mounts_the_existing_ones(
    provider: Provider, world: ProviderWorld
) -> None:
    result = await mount(provider, world, history(1_000_000_000))
    paths = [f.path for f in result.files]  # type: ignore[attr-defined]
    # five versions of `hist`, one disabled: upstream answers the same four files
    assert paths == ["hist/0", "hist/1", "hist/2", "hist/3"]


async def test_files_per_mount_are_limited(
    provider: Provider, world: ProviderWorld, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fetch, "MAX_FILES", 3)
    with pytest.raises(ProviderError) as info:
        await mount(provider, world, history(10))
    assert info.value.kind is Kind.INVALID_ARGUMENT
    assert "more than 3 files" in info.value.message


async def test_listed_versions_are_limited(
    provider: Provider, world: ProviderWorld, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(keyvault, "MAX_LISTED_VERSIONS", 2)
    with pytest.raises(ProviderError) as info:
        await mount(provider, world, history(3))
    assert info.value.kind is Kind.FAILED_PRECONDITION
    assert "more than 2 enabled versions" in info.value.message and "hist" in info.value.message


def test_objects_per_class_are_limited() -> None:
    many = [{"objectName": f"o{i}", "objectType": "secret"} for i in range(limits.MAX_OBJECTS)]
    assert len(parse_objects(objects_yaml(*many))) == limits.MAX_OBJECTS
    extra = {"objectName": "one-more", "objectType": "secret"}
    err = refused(attributes(objects=objects_yaml(*many, extra)))
    assert f"{limits.MAX_OBJECTS + 1} objects, at most {limits.MAX_OBJECTS}" in err.message


def test_objects_text_is_limited() -> None:
    text = objects_yaml(SECRET_OBJECT) + "#" * limits.MAX_OBJECTS_TEXT
    err = refused(attributes(objects=text))
    assert f"at most {limits.MAX_OBJECTS_TEXT}" in err.message and "objects" in err.message


def test_attribute_count_and_size_are_limited() -> None:
    crowded = attributes(**{f"p{i}": "x" for i in range(limits.MAX_ATTRIBUTES)})
    assert f"at most {limits.MAX_ATTRIBUTES}" in refused(crowded).message
    err = refused(attributes(tenantId="t" * (limits.MAX_ATTRIBUTE_VALUE + 1)))
    assert "'tenantId'" in err.message and f"at most {limits.MAX_ATTRIBUTE_VALUE}" in err.message
    err = refused("[" + " " * limits.MAX_REQUEST_TEXT + "]")
    assert f"at most {limits.MAX_REQUEST_TEXT}" in err.message


def test_many_objects_with_deep_aliases_parse_quickly() -> None:
    deep = "/".join(f"d{i}" for i in range(60))
    objs = [
        {"objectName": f"o{i}", "objectType": "secret", "objectAlias": f"{deep}/f{i}"}
        for i in range(limits.MAX_OBJECTS)
    ]
    start = time.perf_counter()
    parse_objects(objects_yaml(*objs))
    assert time.perf_counter() - start < 2.0


# Row 2: echoed input cut, status messages and metric labels bounded.


@pytest.mark.parametrize(
    ("extra", "objects", "rule"),
    [
        ({"keyvaultName": "k" * 20_000}, None, "invalid vault name"),
        ({"usePodIdentity": "y" * 20_000}, None, "is not a boolean"),
        ({"cloudName": "c" * 20_000}, None, "is not valid"),
        ({}, {"objectEncoding": "e" * 1_000_000}, "invalid objectEncoding"),
        ({}, {"objectType": "t" * 1_000_000}, "invalid objectType"),
        ({}, {"objectFormat": "f" * 1_000_000}, "invalid objectFormat"),
        ({}, {"filePermission": "7" * 1_000_000}, "must be an octal file mode"),
        ({}, {"objectAlias": "\x00" + "a" * 1_000_000}, "objectAlias"),
        ({}, {"objectName": "n" * 1_000_000}, "objectName must be 1-127"),
    ],
)
def test_echoed_input_is_cut(
    extra: dict[str, str], objects: dict[str, str] | None, rule: str
) -> None:
    obj = {"objectName": "s", "objectType": "secret", **(objects or {})}
    err = refused(attributes(objects=objects_yaml(obj), **extra))
    assert rule in err.message, err.message
    assert len(err.message) < 600, err.message
    long_value = next(v for v in [*extra.values(), *(objects or {}).values()])
    assert long_value[:200] not in err.message
    assert f"({len(long_value)} chars)" in err.message


def test_a_non_string_value_under_a_huge_key_is_cut() -> None:
    err = refused(json.dumps({"k" * 50_000: 1}))
    assert "(50000 chars)" in err.message and len(err.message) < 300


@pytest.fixture
async def grpc_provider(tmp_path: object) -> AsyncIterator[tuple[str, Metrics]]:
    metrics = Metrics()
    server = grpc.aio.server()
    provider = Provider(ContentOptions(), clouds.PUBLIC, metrics)
    provider_pb2_grpc.add_CSIDriverProviderServicer_to_server(
        ProviderServicer(provider, metrics), server
    )
    socket = f"{tmp_path}/p.sock"
    server.add_insecure_port(f"unix://{socket}")
    await server.start()
    yield socket, metrics
    await server.stop(None)
    await provider.close()


async def test_the_driver_gets_invalid_argument_for_megabytes_of_input(
    grpc_provider: tuple[str, Metrics],
) -> None:
    socket, metrics = grpc_provider
    async with grpc.aio.insecure_channel(f"unix://{socket}") as channel:
        stub = provider_pb2_grpc.CSIDriverProviderStub(channel)
        for i in range(40):
            obj = {"objectName": "s", "objectType": "secret", "objectEncoding": f"{i}" * 90_000}
            request = provider_pb2.MountRequest(
                attributes=json.dumps(attributes(objects=objects_yaml(obj))),
                secrets=json.dumps(SP_SECRETS),
                permission="420",
                target_path="/t",
            )
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.Mount(request)
            assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
            details = info.value.details() or ""
            assert "invalid objectEncoding" in details and len(details) <= limits.MAX_MESSAGE
    exposition = metrics.exposition().decode()
    counts = [line for line in exposition.splitlines() if line.startswith("grpc_request_count")]
    assert len(counts) == 1, counts
    assert 'grpc_message="InvalidArgument: objectEncoding"' in counts[0] and counts[0].endswith(
        " 40.0"
    )
    assert len(exposition) < 20_000


def test_metric_series_are_bounded() -> None:
    metrics = Metrics()
    for i in range(MAX_SERIES + 50):
        metrics.observe_keyvault("secret", f"name-{i}", "", 0.01)
    exposition = metrics.exposition().decode()
    names = {
        line.split('object_name="')[1].split('"')[0]
        for line in exposition.splitlines()
        if "object_name=" in line
    }
    assert len(names) == MAX_SERIES and "name-0" not in names and f"name-{MAX_SERIES + 49}" in names
    assert 'provider_cache_evictions_total{cache="keyvault_request series"} 50.0' in exposition


def test_keyvault_error_label_is_the_kind_not_the_message() -> None:
    err = ProviderError(Kind.NOT_FOUND, "secret x-" + "y" * 500 + " not found")
    assert err.label == "NotFound"
    assert ProviderError(Kind.INVALID_ARGUMENT, "m", reason="objectType").label == (
        "InvalidArgument: objectType"
    )


# Row 3: caches bounded by entries and bytes, evictions counted.


def vault_params(vault: str, secret: str = "sp-secret") -> object:
    return parse_mount(
        json.dumps(attributes(vault=vault)),
        json.dumps({"clientid": "sp", "clientsecret": secret}),
        "420",
    )


async def test_vault_clients_and_rate_limiters_are_bounded() -> None:
    cache = ClientCache(max_clients=8, max_vaults=16, max_identities=4)
    metrics = Metrics()
    Provider(ContentOptions(), clouds.PUBLIC, metrics, cache)
    try:
        for i in range(120):
            async with cache.lease(vault_params(f"kv-{i:04d}")):  # type: ignore[arg-type]
                pass
        sizes = {c.name: len(c) for c in cache.caches()}
        assert sizes == {"credentials": 1, "vault clients": 8, "rate limiters": 16}
        exposition = metrics.exposition().decode()
        assert 'provider_cache_evictions_total{cache="vault clients"} 112.0' in exposition
        for i in range(10):
            async with cache.lease(vault_params("kv-same", f"secret-{i}")):  # type: ignore[arg-type]
                pass
        assert len(cache.caches()[0]) == 4
        exposition = metrics.exposition().decode()
        assert 'provider_cache_evictions_total{cache="credentials"} 7.0' in exposition
        assert 'provider_cache_entries{cache="rate limiters"} 16.0' in exposition
    finally:
        await cache.close()


async def test_an_evicted_client_is_closed_only_when_its_mount_is_done() -> None:
    cache = ClientCache(max_clients=2)
    closed: list[str] = []
    try:
        async with cache.lease(vault_params("kv-first")) as first:  # type: ignore[arg-type]

            async def record() -> None:
                closed.append(first.vault_name)

            first.close = record  # type: ignore[method-assign]
            for name in ("kv-second", "kv-third", "kv-fourth"):
                async with cache.lease(vault_params(name)):  # type: ignore[arg-type]
                    pass
            await asyncio.sleep(0)
            assert closed == [], "closed under a mount still using it"
        await asyncio.sleep(0)
        assert closed == ["kv-first"]
    finally:
        await cache.close()


def test_parsed_objects_cache_is_bounded_by_bytes() -> None:
    before = PARSED_OBJECTS.evictions
    for i in range(40):
        parse_objects(objects_yaml({"objectName": f"o{i}", "objectType": "secret"}) + "#" * 2**20)
    assert PARSED_OBJECTS.bytes <= PARSED_OBJECTS.max_bytes
    assert len(PARSED_OBJECTS) <= 16
    assert PARSED_OBJECTS.evictions - before >= 24


# Row 4: deeply nested JSON is InvalidArgument naming the field.


@pytest.mark.parametrize("where", ["attributes", "secrets", "tokens"])
def test_deeply_nested_json_names_the_field(where: str) -> None:
    deep = "[" * 30_000 + "]" * 30_000  # under the attribute size limit
    attrib = json.dumps(attributes(clientID="wi"))
    secrets = "null"
    if where == "attributes":
        attrib = deep
    elif where == "secrets":
        secrets = deep
    else:
        attrib = json.dumps(
            attributes(clientID="wi", **{"csi.storage.k8s.io/serviceAccount.tokens": deep})
        )
    err = refused(attrib, secrets)
    expected = {
        "attributes": "failed to unmarshal attributes: nested too deeply",
        "secrets": "failed to unmarshal secrets: nested too deeply",
        "tokens": "csi.storage.k8s.io/serviceAccount.tokens is not valid JSON",
    }[where]
    assert expected in err.message, err.message


def test_deeply_nested_yaml_in_objects_is_invalid_argument() -> None:
    err = refused(attributes(objects="array:\n  - " + "[" * 50_000))
    assert "objects" in err.message


# Row 6: a hung identity service is named, not Key Vault.


@pytest.mark.parametrize(
    ("service", "extra", "named"),
    [
        ("entra", {}, "Entra ID (https://login.microsoftonline.com)"),
        ("imds", {"useVMManagedIdentity": "true"}, "managed identity endpoint (IMDS)"),
    ],
)
async def test_a_hung_identity_service_is_named(
    world: ProviderWorld, service: str, extra: dict[str, str], named: str
) -> None:
    p = Provider(
        ContentOptions(),
        clouds.PUBLIC,
        Metrics(),
        ClientCache(ClientOptions(retry_total=0, timeout=1.5)),
    )
    world.emulator.add_fault(service=service, delay_ms=10_000)
    try:
        a = attributes(
            vault=world.vault,
            tenant=world.tenant,
            objects=objects_yaml({"objectName": "plain", "objectType": "secret"}),
            **extra,
        )
        secrets = "null" if extra else json.dumps(world.secrets)
        with pytest.raises(ProviderError) as info:
            await asyncio.wait_for(p.mount(json.dumps(a), secrets, "420"), 10)
        assert info.value.kind in (Kind.DEADLINE_EXCEEDED, Kind.UNAVAILABLE), info.value.message
        assert named in info.value.message, info.value.message
        assert f"Key Vault {world.vault}" not in info.value.message
    finally:
        world.emulator.clear_faults()
        await p.close()


# Row 7: aliases that hide a component or carry control marks are refused where parsed.


@pytest.mark.parametrize(
    ("alias", "rule"),
    [
        (".", "every path component must be a name"),
        ("a/./b", "every path component must be a name"),
        ("a//b", "every path component must be a name"),
        ("a/", "every path component must be a name"),
        ("a\x00b", "control, format or bidirectional characters (found U+0000)"),
        ("invoice\u202etxt.exe", "(found U+202E)"),
        ("line\nbreak", "(found U+000A)"),
        ("x" * 256, "a path component must be at most 255 bytes"),
        ("/".join(["abcdefgh"] * 200), "file name must be at most 1024 bytes"),
    ],
)
def test_aliases_refused_where_parsed(alias: str, rule: str) -> None:
    obj = {"objectName": "s", "objectType": "secret", "objectAlias": alias}
    err = refused(attributes(objects=objects_yaml(SECRET_OBJECT | {"objectName": "ok"}, obj)))
    assert "objects[1] (s)" in err.message and "objectAlias" in err.message
    assert rule in err.message, err.message


# cloudEnvFileName names a file on the provider's node: read little, never block.


@pytest.mark.parametrize("kind", ["fifo", "device", "large"])
def test_cloud_env_file_is_read_bounded(kind: str, tmp_path: os.PathLike[str]) -> None:
    path = os.path.join(tmp_path, "env.json")
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "device":
        path = "/dev/zero"
    else:
        with open(path, "w") as handle:
            handle.write(" " * (limits.MAX_ENV_FILE + 1) + "{}")
    start = time.perf_counter()
    err = refused(attributes(cloudName="AzureStackCloud", cloudEnvFileName=path))
    assert time.perf_counter() - start < 1.0
    rule = "must be a regular file" if kind != "large" else f"at most {limits.MAX_ENV_FILE} bytes"
    assert rule in err.message, err.message


# The property: any parameter map and any `objects` text is a success or a clear refusal, in
# bounded time, with a bounded message and a metric label that never carries input.

KNOWN_KEYS = [
    "keyvaultName",
    "tenantId",
    "tenantID",
    "clientID",
    "cloudName",
    "usePodIdentity",
    "useVMManagedIdentity",
    "useAzureTokenProxy",
    "userAssignedIdentityID",
    "objects",
    "csi.storage.k8s.io/pod.name",
    "csi.storage.k8s.io/pod.namespace",
    "csi.storage.k8s.io/serviceAccount.tokens",
]
FIELD_VALUES = {
    "objectName": ["s1", "", "bad name", "x" * 128],
    "objectType": ["secret", "key", "cert", "Secret", ""],
    "objectAlias": ["", ".", "a/./b", "a//b", "a/", "../x", "/abs", "d/f", "s1", "\u202e"],
    "objectVersion": ["", "latest", "abc123", "../x"],
    "objectVersionHistory": ["", "0", "2", "-1", "2147483648", "1e9", "999999999999"],
    "objectFormat": ["", "pem", "PFX", "der"],
    "objectEncoding": ["", "base64", "hex", "utf-8", "rot13"],
    "filePermission": ["", "0644", "0999", "10000", "rw"],
}


REASONS = {
    "",
    *KNOWN_KEYS,
    *FIELD_VALUES,
    "attributes",
    "secrets",
    "permission",
    "attribute size",
    "identity mode",
    "credentials",
    "clientid",
    "clientsecret",
}


def _strategies():  # type: ignore[no-untyped-def]
    from hypothesis import strategies as st

    # long enough that an uncut echo shows
    long_text = st.text(st.characters(blacklist_categories=["Cs"]), min_size=61, max_size=400)
    field = st.sampled_from(sorted(FIELD_VALUES)).flatmap(
        lambda k: st.tuples(
            st.just(k), st.sampled_from(FIELD_VALUES[k]) | st.text(max_size=30) | long_text
        )
    )
    obj = st.lists(field, max_size=8).map(dict)
    structured = st.lists(obj, min_size=0, max_size=20).map(lambda objs: objects_yaml(*objs))
    raw_yaml = st.text(
        alphabet=st.sampled_from(list("array:-|[]{}&*!#'\"\n\t ab01./\\\x00")), max_size=400
    )
    objects = structured | raw_yaml | st.text(max_size=200)
    overrides = st.dictionaries(
        st.sampled_from(KNOWN_KEYS) | st.text(max_size=40) | long_text,
        st.text(max_size=30)
        | long_text
        | st.sampled_from(["true", "false", "kv-test", "AzureStackCloud"]),
        max_size=6,
    )
    return objects, overrides


def test_any_request_is_parsed_or_refused_clearly() -> None:
    from datetime import timedelta

    from hypothesis import HealthCheck, given, settings

    objects, overrides = _strategies()

    @settings(
        max_examples=400,
        deadline=timedelta(seconds=2),
        suppress_health_check=[HealthCheck.too_slow],
    )
    @given(objects=objects, extra=overrides)
    def check(objects: str, extra: dict[str, str]) -> None:
        attrib = attributes(objects=objects)
        attrib.update(extra)
        attrib.pop("cloudEnvFileName", None)  # names a file on this machine
        try:
            parse_mount(json.dumps(attrib), json.dumps(SP_SECRETS), "420")
        except ProviderError as err:
            assert err.kind in (Kind.INVALID_ARGUMENT, Kind.UNIMPLEMENTED), err.message
            assert len(err.message) <= limits.MAX_MESSAGE
            assert err.label.split(": ")[0] in {k.value for k in Kind}
            reason = err.label.partition(": ")[2]
            assert reason in REASONS, err.label
            echoed = [v for v in (objects, *extra, *extra.values()) if len(v) > 60]
            assert not [v for v in echoed if v in err.message or repr(v) in err.message]

    check()
