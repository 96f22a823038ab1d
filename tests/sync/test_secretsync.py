"""SecretSync on the real control plane, emulator and provider: create, update within one
poll, force, the Secret's shape (data, labels, owner), and garbage collection."""

from __future__ import annotations

import pytest
from lightkube.types import PatchType

from sync_controller.api import CONTROLLER_LABEL, NAME_LABEL, SecretSync

from .conftest import NAMESPACE, POLL, VAULT, World, condition, decoded, unique, until

pytestmark = pytest.mark.peers


async def test_create_update_force_and_collect(world: World) -> None:
    spc, name = unique("spc"), unique("db")
    await world.spc(spc, ["db-password", "username"])
    await world.secretsync(
        name,
        spc,
        {"db-password": "password", "username": "user"},
        secret_object={"labels": {"app": "web"}},
    )

    secret = await until(lambda: world.secret(name), what="the Secret")
    assert decoded(secret) == {"password": "hunter2", "user": "app-user"}
    assert secret.type == "Opaque"
    labels = secret.metadata.labels or {}
    assert labels[CONTROLLER_LABEL] == "" and labels[NAME_LABEL] == name
    assert labels["app"] == "web"
    sync = await world.get_sync(name)
    (owner,) = secret.metadata.ownerReferences
    assert (owner.kind, owner.name, owner.uid) == ("SecretSync", name, sync["metadata"]["uid"])
    assert owner.apiVersion == "secret-sync.x-k8s.io/v1alpha1"
    created = await until(lambda: _cond(world, name, "SecretCreated", "True"), what="SecretCreated")
    assert created["reason"] == "CreateSuccessful"
    sync = await world.get_sync(name)
    assert sync["status"]["syncHash"] and sync["status"]["lastSuccessfulSyncTime"]
    assert condition(sync, "SecretUpdated")["reason"] == "SecretUpToDate"

    # a value changed in Key Vault: the Secret follows within one poll
    world.emulator.set_secret(VAULT, "db-password", "rotated-1")
    await until(
        lambda: _value(world, name, "password", "rotated-1"),
        within=POLL * 2 + 3,
        what="the rotated value",
    )

    # someone edits the Secret: put back at once, not at the next poll
    secret = await world.secret(name)
    secret.data = {**(secret.data or {}), "password": "ZWRpdGVk"}
    await world.admin.replace(secret)
    await until(
        lambda: _value(world, name, "password", "rotated-1"), within=POLL, what="the edit undone"
    )
    assert f"secret {NAMESPACE}/{name} modified by someone else" in world.controller.text()

    # force: a changed forceSynchronization syncs at once, without waiting for the poll
    world.emulator.set_secret(VAULT, "db-password", "rotated-2")
    await world.admin.patch(
        SecretSync,
        name,
        {"spec": {"forceSynchronization": "now-1"}},
        namespace=NAMESPACE,
        patch_type=PatchType.MERGE,
    )
    await until(
        lambda: _value(world, name, "password", "rotated-2"), within=POLL, what="the forced value"
    )

    # deleted by someone: created again
    await world.admin.delete(type(secret), name, namespace=NAMESPACE)
    await until(lambda: world.secret(name), within=POLL, what="the Secret recreated")

    # the SecretSync deleted: its Secret collected by the garbage collector
    await world.admin.delete(SecretSync, name, namespace=NAMESPACE)
    await until(lambda: _gone(world, name), within=10, what="the Secret collected")


async def _cond(world: World, name: str, kind: str, status: str) -> dict[str, object] | None:
    c = condition(await world.get_sync(name), kind)
    return c if c.get("status") == status else None


async def _value(world: World, name: str, key: str, value: str) -> bool:
    secret = await world.secret(name)
    return secret is not None and decoded(secret).get(key) == value


async def _gone(world: World, name: str) -> bool:
    return await world.secret(name) is None
