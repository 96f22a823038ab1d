"""Secrets through the real SDK (sync and .aio) and raw HTTP validated against the schemas."""

from __future__ import annotations

import datetime
import itertools
import time
import uuid

import pytest
from azure.core.exceptions import HttpResponseError, ResourceNotFoundError
from azure.identity.aio import ClientSecretCredential as AioClientSecretCredential
from azure.keyvault.secrets import SecretClient
from azure.keyvault.secrets.aio import SecretClient as AioSecretClient

from testbed import emulator as t
from testbed.emulator import Emulator
from testbed.kvhttp import Raw

from .conftest import KV_TEST


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def test_set_get_versions_update(secrets_officer: SecretClient) -> None:
    name = unique("s")
    v1 = secrets_officer.set_secret(name, "one", content_type="text/plain", tags={"a": "1"})
    v2 = secrets_officer.set_secret(name, "two")
    assert v1.properties.version != v2.properties.version
    assert len(v1.properties.version or "") == 32
    assert v1.id == f"https://kv-test.vault.azure.net/secrets/{name}/{v1.properties.version}"
    assert secrets_officer.get_secret(name).value == "two"
    old = secrets_officer.get_secret(name, v1.properties.version)
    assert old.value == "one"
    assert old.properties.content_type == "text/plain"
    assert old.properties.tags == {"a": "1"}
    versions = {p.version for p in secrets_officer.list_properties_of_secret_versions(name)}
    assert versions == {v1.properties.version, v2.properties.version}
    exp = int(time.time()) + 3600
    props = secrets_officer.update_secret_properties(
        name,
        v1.properties.version,
        enabled=False,
        content_type="x/y",
        tags={"b": "2"},
        expires_on=datetime.datetime.fromtimestamp(exp, datetime.UTC),
    )
    assert props.enabled is False
    assert props.content_type == "x/y"
    assert props.tags == {"b": "2"}
    assert props.expires_on is not None and int(props.expires_on.timestamp()) == exp
    with pytest.raises(HttpResponseError) as info:
        secrets_officer.get_secret(name, v1.properties.version)
    assert info.value.status_code == 403
    assert info.value.error is not None and info.value.error.code == "Forbidden"
    # the newest version is unaffected
    assert secrets_officer.get_secret(name).value == "two"


def test_list_pages_with_maxresults(emulator: Emulator, secrets_officer: SecretClient) -> None:
    names = [unique("pg") for _ in range(4)]
    for n in names:
        secrets_officer.set_secret(n, "x")
    raw = Raw(emulator, t.SP_OFFICER_ID)
    first = raw.ok("GET", "/secrets", "SecretListResult", params={"maxresults": "2"})
    assert len(first["value"]) == 2 and first["nextLink"]
    assert "maxresults=2" in first["nextLink"] and "$skiptoken=" in first["nextLink"]
    seen = [i["id"] for i in first["value"]]
    link = first["nextLink"]
    while link:
        resp = raw.session.get(link, headers={"Authorization": f"Bearer {raw.token}"}, timeout=10)
        assert resp.status_code == 200
        page = resp.json()
        assert len(page["value"]) <= 2
        seen += [i["id"] for i in page["value"]]
        link = page["nextLink"]
    assert all(f"https://kv-test.vault.azure.net/secrets/{n}" in seen for n in names)
    assert len(seen) == len(set(seen))
    # the SDK follows nextLink itself
    listed = {p.name for p in secrets_officer.list_properties_of_secrets(max_page_size=3)}
    assert set(names) <= listed


def test_delete_recover_purge(secrets_officer: SecretClient) -> None:
    name = unique("del")
    secrets_officer.set_secret(name, "v")
    deleted = secrets_officer.begin_delete_secret(name).result()
    assert deleted.recovery_id == f"https://kv-test.vault.azure.net/deletedsecrets/{name}"
    assert deleted.deleted_date is not None and deleted.scheduled_purge_date is not None
    assert (deleted.scheduled_purge_date - deleted.deleted_date).days == 90  # default retention
    with pytest.raises(ResourceNotFoundError):
        secrets_officer.get_secret(name)
    assert secrets_officer.get_deleted_secret(name).name == name
    assert name in {d.name for d in secrets_officer.list_deleted_secrets()}
    with pytest.raises(HttpResponseError) as info:
        secrets_officer.set_secret(name, "again")
    assert info.value.status_code == 409
    recovered = secrets_officer.begin_recover_deleted_secret(name).result()
    assert recovered.name == name
    assert secrets_officer.get_secret(name).value == "v"
    secrets_officer.begin_delete_secret(name).result()
    secrets_officer.purge_deleted_secret(name)
    with pytest.raises(ResourceNotFoundError) as gone:
        secrets_officer.get_deleted_secret(name)
    assert gone.value.error is not None and gone.value.error.code == "SecretNotFound"
    assert f"Deleted Secret not found: {name}" in str(gone.value.message)
    with pytest.raises(ResourceNotFoundError):
        secrets_officer.purge_deleted_secret(name)  # purging twice: the second is a 404
    secrets_officer.set_secret(name, "reborn")
    assert secrets_officer.get_secret(name).value == "reborn"


def test_names_are_case_insensitive(secrets_officer: SecretClient) -> None:
    name = unique("Mixed")
    secrets_officer.set_secret(name, "v")
    got = secrets_officer.get_secret(name.lower())
    assert got.value == "v"
    assert got.name == name  # the spelling it was created with


def test_seeded_objects(secrets_officer: SecretClient) -> None:
    typed = secrets_officer.get_secret("typed")
    assert typed.properties.content_type == "application/json"
    assert typed.properties.tags == {"team": "platform"}
    assert secrets_officer.get_secret(
        "disabled-latest", "0000000000000000000000000000000a"
    ).value == ("still-readable")


async def test_aio_round_trip(emulator: Emulator) -> None:
    cred = AioClientSecretCredential(t.TENANT_ID, t.SP_OFFICER_ID, t.SP_OFFICER_SECRET)
    async with cred, AioSecretClient(KV_TEST, cred) as client:
        name = unique("aio")
        s = await client.set_secret(name, "async-value", content_type="text/plain")
        got = await client.get_secret(name)
        assert got.value == "async-value" and got.properties.version == s.properties.version
        await client.set_secret(name, "second")
        versions = [p async for p in client.list_properties_of_secret_versions(name)]
        assert len(versions) == 2
        props = await client.update_secret_properties(name, s.properties.version, enabled=False)
        assert props.enabled is False
        names = [p.name async for p in client.list_properties_of_secrets()]
        assert name in names
        deleted = await client.delete_secret(name)
        assert deleted.name == name
        assert (await client.get_deleted_secret(name)).name == name
        await client.purge_deleted_secret(name)


def test_raw_shapes(emulator: Emulator) -> None:
    raw = Raw(emulator, t.SP_OFFICER_ID)
    name = unique("raw")
    body = raw.ok(
        "PUT",
        f"/secrets/{name}",
        "SecretBundle",
        {
            "value": "v",
            "contentType": "text/plain",
            "tags": {"k": "v"},
            "attributes": {"enabled": True, "exp": 2000000000, "nbf": 1000000000},
        },
    )
    assert body["value"] == "v" and body["attributes"]["exp"] == 2000000000
    assert body["attributes"]["recoveryLevel"] == "Recoverable+Purgeable"
    version = body["id"].rsplit("/", 1)[1]
    raw.ok("GET", f"/secrets/{name}", "SecretBundle")
    raw.ok("GET", f"/secrets/{name}/", "SecretBundle")
    raw.ok("GET", f"/secrets/{name}/{version}", "SecretBundle")
    upd = raw.ok("PATCH", f"/secrets/{name}/{version}", "SecretBundle", {"tags": {"n": "1"}})
    assert "value" not in upd
    raw.ok("GET", f"/secrets/{name}/versions", "SecretListResult")
    raw.ok("GET", "/secrets", "SecretListResult")
    raw.ok("GET", "/secrets/cert-pem", "SecretBundle")
    deleted = raw.ok("DELETE", f"/secrets/{name}", "DeletedSecretBundle")
    assert "value" not in deleted
    raw.ok("GET", f"/deletedsecrets/{name}", "DeletedSecretBundle")
    raw.ok("GET", "/deletedsecrets", "DeletedSecretListResult")
    raw.ok("POST", f"/deletedsecrets/{name}/recover", "SecretBundle")
    raw.ok("DELETE", f"/secrets/{name}", "DeletedSecretBundle")
    assert raw.call("DELETE", f"/deletedsecrets/{name}").status_code == 204


@pytest.mark.parametrize("api", ["7.4", "7.5", "7.6", "2025-07-01", "2026-04-01", "9.9-preview"])
def test_any_api_version(emulator: Emulator, api: str) -> None:
    raw = Raw(emulator, t.SP_READER_ID, api=api)
    assert raw.call("GET", "/secrets/plain").json()["value"] == "plain-v2"


def test_versions_made_in_one_second_sort_by_created(secrets_officer: SecretClient) -> None:
    name = unique("burst")
    made = [secrets_officer.set_secret(name, str(i)).properties for i in range(4)]
    created = [p.created_on for p in made]
    assert all(a is not None and b is not None and a < b for a, b in itertools.pairwise(created))
    listed = sorted(
        secrets_officer.list_properties_of_secret_versions(name),
        key=lambda p: p.created_on,  # type: ignore[arg-type,return-value]
        reverse=True,
    )
    assert [p.version for p in listed] == [p.version for p in reversed(made)]


def test_seeded_relative_times(emulator: Emulator) -> None:
    name = unique("rel")
    emulator.seed(
        {
            "vaults": [
                {
                    "name": "kv-test",
                    "secrets": [{"name": name, "value": "v", "exp": "-1h", "nbf": "-2d"}],
                }
            ]
        }
    )
    body = Raw(emulator, t.SP_READER_ID).call("GET", f"/secrets/{name}").json()
    now = int(time.time())
    assert abs(body["attributes"]["exp"] - (now - 3600)) < 60
    assert abs(body["attributes"]["nbf"] - (now - 2 * 86400)) < 60
    # Key Vault does not enforce exp/nbf on a secret GET: the value still comes back
    assert body["value"] == "v"
