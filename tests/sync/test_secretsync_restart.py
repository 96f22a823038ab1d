"""The controller restarted mid-sync, and two SecretSyncs naming one Secret."""

from __future__ import annotations

import asyncio

import pytest
from lightkube import ApiError
from lightkube.resources.core_v1 import Secret
from lightkube.types import CascadeType

from sync_controller.api import SecretSync

from .conftest import (
    NAMESPACE,
    POLL,
    VAULT,
    World,
    condition,
    decoded,
    fast_lease_controller,
    unique,
    until,
)

pytestmark = pytest.mark.peers


_controller = fast_lease_controller


async def _synced(world: World, name: str, data: dict[str, str]) -> bool:
    secret = await world.secret(name)
    c = condition(await world.get_sync(name), "SecretUpdated")
    return secret is not None and decoded(secret) == data and c.get("status") == "True"


async def test_controller_killed_mid_sync(world: World) -> None:
    """SIGKILL while the provider is fetching: the next controller (once the dead one's Lease
    has run out) finishes that sync, and leaves a Secret that was already right unwritten."""
    spc, done, slow, value = unique("spc"), unique("done"), unique("slow"), unique("slowval")
    world.emulator.set_secret(VAULT, value, "eventually")
    await world.spc(spc, ["username"])
    await world.secretsync(done, spc, {"username": "user"})
    await until(lambda: _synced(world, done, {"user": "app-user"}), what="the first sync")
    before = (await world.secret(done)).metadata.resourceVersion  # type: ignore[union-attr]

    slow_spc = unique("spc")
    await world.spc(slow_spc, [value])
    world.emulator.add_fault(service="kv", vault=VAULT, path=f"/secrets/{value}", delay_ms=3000)
    try:
        await world.secretsync(slow, slow_spc, {value: "v"})

        async def fetching() -> bool:  # the GET has reached the vault and is held there
            return any(f["hits"] for f in world.emulator.faults())

        await until(fetching, what="the provider fetching for the slow SecretSync")
        world.controller.kill()
        assert await world.secret(slow) is None  # killed before it could write
        world.controller = _controller(world, "restarted.log").start()
        await until(
            lambda: _synced(world, slow, {"v": "eventually"}),
            within=15,
            what="the sync finished by the restarted controller",
        )
    finally:
        world.emulator.clear_faults()
    await until(lambda: _synced(world, done, {"user": "app-user"}), what="the first one kept")
    after = await world.secret(done)
    assert after is not None and after.metadata.resourceVersion == before  # not rewritten


async def test_two_secretsyncs_one_secret(world: World) -> None:
    """The Secret is named as its SecretSync, so two live SecretSyncs can only name one Secret
    by sharing a name, which the API server refuses (409). What can happen is an earlier
    SecretSync of that name leaving its Secret behind: deleted with propagation Orphan (the
    deterministic case here; with the default background deletion the garbage collector removes
    the old Secret within ~0.1 s, and a new SecretSync that comes first meets the same rule).
    The new one (a new uid) never takes that Secret over: ControllerPatchError, the Secret left
    as it is; deleted by its owner, the new SecretSync creates its own at once (Secret watch)."""
    spc, name = unique("spc"), unique("twice")
    await world.spc(spc, ["username"])
    await world.secretsync(name, spc, {"username": "user"})
    with pytest.raises(ApiError) as e:
        await world.secretsync(name, spc, {"username": "other"})
    assert e.value.status.code == 409
    await until(lambda: _synced(world, name, {"user": "app-user"}), what="the first Secret")
    old_uid = (await world.get_sync(name))["metadata"]["uid"]

    await world.admin.delete(SecretSync, name, namespace=NAMESPACE, cascade=CascadeType.ORPHAN)
    while True:  # until the orphan finalizer is done: owner references removed, object gone
        try:
            await world.secretsync(name, spc, {"username": "again"})
            break
        except ApiError as err:
            if err.status.code != 409:
                raise
            await asyncio.sleep(0.05)
    new_uid = (await world.get_sync(name))["metadata"]["uid"]
    assert new_uid != old_uid

    async def refused() -> dict[str, object] | None:
        c = condition(await world.get_sync(name), "SecretCreated")
        return c if c.get("reason") == "ControllerPatchError" else None

    c = await until(refused, what="ControllerPatchError on the new SecretSync")
    assert "is not owned by this SecretSync alone" in str(c["message"])
    left = await world.secret(name)
    assert left is not None and decoded(left) == {"user": "app-user"}
    assert not left.metadata.ownerReferences

    await world.admin.delete(Secret, name, namespace=NAMESPACE)

    async def owned_by_new() -> Secret | None:
        secret = await world.secret(name)
        if secret is None:
            return None
        refs = secret.metadata.ownerReferences or []
        ok = [r.uid for r in refs] == [new_uid] and decoded(secret) == {"again": "app-user"}
        return secret if ok else None

    await until(owned_by_new, within=POLL, what="the Secret of the new SecretSync")
