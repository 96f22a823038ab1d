"""Guard (issue 19): mounts of the same vault and object under different identities never
share a fetch. The provider coalesces concurrent fetches of one object, and reuses one Key
Vault client per (identity, vault): if either keyed on the vault alone, a denied identity
would get an allowed identity's secret while that one's fetch is in flight."""

from __future__ import annotations

import asyncio
import json

from provider_azure.auth import ClientCache
from provider_azure.errors import Kind, ProviderError
from provider_azure.fetch import ContentOptions, Fetcher
from provider_azure.keyvault import CertificateValue, KeyValue, SecretValue, VersionInfo
from provider_azure.parameters import MountParameters, parse_mount
from testbed.mount_attributes import attributes, objects_yaml


class IdentityVault:
    """One identity's view of vault kv-test: `allowed` reads the secret, else 403."""

    vault_name = "kv-test"

    def __init__(self, allowed: bool, release: asyncio.Event | None = None) -> None:
        self.allowed = allowed
        self.release = release
        self.calls = 0

    async def get_secret(self, name: str, version: str) -> SecretValue:
        self.calls += 1
        if not self.allowed:
            raise ProviderError(Kind.PERMISSION_DENIED, f"secret {name}: 403 Forbidden")
        if self.release is not None:
            await self.release.wait()  # still fetching while the other identity asks
        return SecretValue("the-secret", "", "", "v1")

    async def get_key(self, name: str, version: str) -> KeyValue:
        raise AssertionError

    async def get_certificate(self, name: str, version: str) -> CertificateValue:
        raise AssertionError

    async def list_versions(self, object_type: str, name: str) -> list[VersionInfo]:
        raise AssertionError


def _params(client_id: str) -> MountParameters:
    return parse_mount(
        json.dumps(attributes(objects=objects_yaml({"objectName": "s", "objectType": "secret"}))),
        json.dumps({"clientid": client_id, "clientsecret": f"{client_id}-secret-value"}),
        "420",
    )


def test_denied_identity_gets_its_403_while_an_allowed_one_is_fetching() -> None:
    async def run() -> None:
        release = asyncio.Event()
        allowed, denied = IdentityVault(True, release), IdentityVault(False)
        fetcher = Fetcher(ContentOptions())
        params = _params("allowed-client")
        first = asyncio.ensure_future(fetcher.mount(params, allowed))
        await asyncio.sleep(0.01)
        assert allowed.calls == 1 and fetcher._inflight  # the allowed fetch is in flight
        try:
            async with asyncio.timeout(2):  # a shared fetch would wait for the allowed one
                await fetcher.mount(_params("denied-client"), denied)
            raise AssertionError("the denied identity got content")
        except ProviderError as e:
            assert e.kind is Kind.PERMISSION_DENIED
        except TimeoutError:
            raise AssertionError("the denied identity waited on another identity's fetch") from None
        assert denied.calls == 1  # its own request, not a share of the other's
        release.set()
        result = await first
        assert [f.contents for f in result.files] == [b"the-secret"]

    asyncio.run(run())


def test_one_client_per_identity_and_vault() -> None:
    async def run() -> None:
        cache = ClientCache()
        try:
            async with cache.lease(_params("client-a")) as a1:
                pass
            async with cache.lease(_params("client-a")) as a2:
                pass
            async with cache.lease(_params("client-b")) as b:
                pass
            assert a1 is a2  # one identity: one client (token and challenge caches work)
            assert b is not a1  # another identity on the same vault: its own client
        finally:
            await cache.close()

    asyncio.run(run())
