"""Layout rules of one mount, on an in-memory vault (the emulator tests cover the real SDK)."""

from __future__ import annotations

import asyncio
import base64
import datetime
import json

import pytest

from provider_azure.errors import Kind, ProviderError
from provider_azure.fetch import ContentOptions, Fetcher
from provider_azure.keyvault import CertificateValue, KeyValue, SecretValue, VersionInfo
from provider_azure.parameters import parse_mount
from testbed.mount_attributes import SP_SECRETS, attributes, objects_yaml

from .pki import make_chain

T0 = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)


class MemoryVault:
    vault_name = "kv-test"

    def __init__(self) -> None:
        self.secrets: dict[str, list[tuple[str, SecretValue, bool]]] = {}
        self.calls: list[tuple[str, str, str]] = []
        self.in_flight = 0
        self.max_in_flight = 0

    def add(
        self, name: str, value: str, content_type: str = "", kid: str = "", enabled: bool = True
    ) -> str:
        versions = self.secrets.setdefault(name, [])
        version = f"v{len(versions) + 1}"
        versions.append((version, SecretValue(value, content_type, kid, version), enabled))
        return version

    async def _enter(self, call: tuple[str, str, str]) -> None:
        self.calls.append(call)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        await asyncio.sleep(0.01)
        self.in_flight -= 1

    async def get_secret(self, name: str, version: str) -> SecretValue:
        await self._enter(("secret", name, version))
        versions = self.secrets.get(name)
        if not versions:
            raise ProviderError(Kind.NOT_FOUND, f"secret {name} not found")
        if not version:
            return versions[-1][1]
        return next(v for ver, v, _ in versions if ver == version)

    async def get_key(self, name: str, version: str) -> KeyValue:
        raise AssertionError

    async def get_certificate(self, name: str, version: str) -> CertificateValue:
        raise AssertionError

    async def list_versions(self, object_type: str, name: str) -> list[VersionInfo]:
        await self._enter(("list", name, ""))
        return [
            VersionInfo(ver, T0 + datetime.timedelta(minutes=i))
            for i, (ver, _, enabled) in enumerate(self.secrets[name])
            if enabled
        ]


def mount(
    vault: MemoryVault, *objects: dict[str, object], options: ContentOptions | None = None, **kw
):  # type: ignore[no-untyped-def]
    params = parse_mount(
        json.dumps(attributes(objects=objects_yaml(*objects))), json.dumps(SP_SECRETS), "420"
    )
    return asyncio.run(Fetcher(options or ContentOptions(), **kw).mount(params, vault))


def test_history_layout_newest_first_disabled_skipped() -> None:
    vault = MemoryVault()
    for i in range(5):
        vault.add("h", f"value{i}", enabled=i != 3)
    result = mount(vault, {"objectName": "h", "objectType": "secret", "objectVersionHistory": 2})
    assert [(f.path, f.contents) for f in result.files] == [
        ("h/0", b"value4"),
        ("h/1", b"value2"),
        ("h/2", b"value1"),
    ]
    assert [(v.id, v.version) for v in result.object_versions] == [
        ("secret/h/0", "v5"),
        ("secret/h/1", "v3"),
        ("secret/h/2", "v2"),
    ]


def test_history_from_pinned_version() -> None:
    vault = MemoryVault()
    for i in range(4):
        vault.add("h", f"value{i}")
    result = mount(
        vault,
        {
            "objectName": "h",
            "objectType": "secret",
            "objectVersion": "v3",
            "objectVersionHistory": 2,
            "objectAlias": "x",
        },
    )
    assert [f.path for f in result.files] == ["x/0", "x/1", "x/2"]
    assert [f.contents for f in result.files] == [b"value2", b"value1", b"value0"]


def test_history_one_is_a_single_file_and_latest_means_current() -> None:
    vault = MemoryVault()
    vault.add("s", "old")
    vault.add("s", "new")
    result = mount(
        vault,
        {
            "objectName": "s",
            "objectType": "secret",
            "objectVersionHistory": 1,
            "objectVersion": "latest",
        },
    )
    assert [(f.path, f.contents) for f in result.files] == [("s", b"new")]
    assert vault.calls == [("secret", "s", "")]


def test_modes_order_and_concurrency() -> None:
    vault = MemoryVault()
    names = [f"s{i:02d}" for i in range(20)]
    for n in names:
        vault.add(n, n.upper())
    objs = [{"objectName": n, "objectType": "secret"} for n in names]
    objs[0]["filePermission"] = "0600"
    result = mount(vault, *objs, concurrency=4)
    assert [f.path for f in result.files] == names
    assert result.files[0].mode == 0o600 and result.files[1].mode == 0o644
    assert vault.max_in_flight == 4


def test_same_object_fetched_once_per_mount() -> None:
    vault = MemoryVault()
    vault.add("s", "x")
    mount(
        vault,
        {"objectName": "s", "objectType": "secret"},
        {"objectName": "s", "objectType": "secret", "objectAlias": "again"},
    )
    assert vault.calls == [("secret", "s", "")]


@pytest.mark.parametrize("kind", ["rsa", "ec"])
def test_certificate_secret_pfx_and_pem(kind: str) -> None:
    chain = make_chain(kind)
    vault = MemoryVault()
    vault.add(
        "pfx",
        chain.pfx_b64(),
        "application/x-pkcs12",
        kid="https://kv-test.vault.azure.net/keys/pfx/v1",
    )
    pem_text = (chain.key_pkcs8_pem + chain.ordered_pem).decode()
    vault.add(
        "pem", pem_text, "application/x-pem-file", kid="https://kv-test.vault.azure.net/keys/pem/v1"
    )
    result = mount(
        vault,
        {"objectName": "pfx", "objectType": "secret"},
        {
            "objectName": "pfx",
            "objectType": "secret",
            "objectFormat": "pfx",
            "objectAlias": "raw.pfx",
        },
        {
            "objectName": "pfx",
            "objectType": "secret",
            "objectFormat": "pfx",
            "objectEncoding": "base64",
            "objectAlias": "bin.pfx",
        },
        {"objectName": "pem", "objectType": "secret"},
        options=ContentOptions(write_cert_and_key_in_separate_files=True),
    )
    files = {f.path: f.contents for f in result.files}
    assert [f.path for f in result.files] == [
        "pfx.crt",
        "pfx.key",
        "pfx",
        "raw.pfx.crt",
        "raw.pfx.key",
        "raw.pfx",
        "bin.pfx.crt",
        "bin.pfx.key",
        "bin.pfx",
        "pem.crt",
        "pem.key",
        "pem",
    ]
    assert files["pfx"] == chain.key_pkcs8_pem + chain.ordered_pem
    assert files["pfx.crt"] == chain.ordered_pem and files["pfx.key"] == chain.key_pkcs8_pem
    assert files["raw.pfx"].decode() == vault.secrets["pfx"][0][1].value
    assert files["raw.pfx.crt"] == b"" and files["raw.pfx.key"] == b""
    assert files["bin.pfx"] == base64.b64decode(vault.secrets["pfx"][0][1].value)
    assert files["pem"] == pem_text.encode() and files["pem.crt"] == chain.ordered_pem


def test_unknown_certificate_content_type() -> None:
    vault = MemoryVault()
    vault.add("c", "x", "text/plain", kid="https://kv/keys/c/v1")
    with pytest.raises(ProviderError, match="unknown content type 'text/plain'"):
        mount(vault, {"objectName": "c", "objectType": "secret"})


def test_not_found_names_object() -> None:
    with pytest.raises(ProviderError) as info:
        mount(MemoryVault(), {"objectName": "nope", "objectType": "secret"})
    assert info.value.kind is Kind.NOT_FOUND


def test_concurrent_mounts_share_fetches_in_flight_only() -> None:
    vault = MemoryVault()
    vault.add("s", "x")
    vault.add("t", "y")
    params = parse_mount(
        json.dumps(
            attributes(
                objects=objects_yaml(
                    {"objectName": "s", "objectType": "secret"},
                    {"objectName": "t", "objectType": "secret"},
                )
            )
        ),
        json.dumps(SP_SECRETS),
        "420",
    )
    fetcher = Fetcher(ContentOptions())

    async def run() -> None:
        results = await asyncio.gather(*(fetcher.mount(params, vault) for _ in range(5)))
        assert all(r == results[0] for r in results)
        assert sorted(vault.calls) == [("secret", "s", ""), ("secret", "t", "")]
        await fetcher.mount(params, vault)  # finished fetches are not reused
        assert len(vault.calls) == 4
        assert fetcher._inflight == {}

    asyncio.run(run())
