"""One active replica: a second controller waits on the Lease; when the leader's Lease is
taken from it, it stops (exit 1) and the candidate takes over within the lease duration; when
it is taken while a sync is in flight, the old leader writes nothing after (its writes are
fenced by a fresh read of the Lease) and the new one finishes the sync: one writer."""

from __future__ import annotations

import asyncio
import contextlib
import datetime

import pytest
from lightkube import ApiError
from lightkube.resources.coordination_v1 import Lease
from lightkube.resources.core_v1 import Secret
from lightkube.types import PatchType

from sync_controller.leader import LEASE_NAME
from testbed.sync_controller import SyncControllerProcess

from .conftest import AUDIENCE, NAMESPACE, POLL, VAULT, World, decoded, unique, until

pytestmark = pytest.mark.peers


async def _holder(world: World) -> str:
    try:
        lease = await world.admin.get(Lease, LEASE_NAME, namespace="kube-system")
    except ApiError:
        return ""  # not created yet
    return str(lease.spec.holderIdentity or "")


async def test_lease_lost_then_taken_over(world: World) -> None:
    first = world.controller
    await until(lambda: _holder(world), what="a leader")
    leader = await _holder(world)
    second = SyncControllerProcess(
        world.kubeconfig,
        world.provider.socket.parent,
        world.root / "second.log",
        f"--token-request-audience={AUDIENCE}",
        f"--rotation-poll-interval={POLL}s",
        "--leader-elect",
        "--leader-election-lease-duration=3s",
        "--leader-election-renew-deadline=2s",
        "--leader-election-retry-period=0.5s",
        pod_name="sync-controller-1",
    ).start()
    try:
        await asyncio.sleep(2)
        assert await _holder(world) == leader  # the candidate waits
        # the Lease taken from the leader (as by a partition): it must stop
        await world.admin.patch(
            Lease,
            LEASE_NAME,
            {"spec": {"holderIdentity": "intruder"}},
            namespace="kube-system",
            patch_type=PatchType.MERGE,
        )
        assert first.proc is not None
        assert await asyncio.to_thread(first.proc.wait, 5) == 1
        assert "leader election lost" in first.text()
        # the intruder never renews: the candidate takes over within the lease duration
        await until(lambda: _is(world, "sync-controller-1"), within=6, what="takeover")
        spc, name = unique("spc"), unique("after")
        await world.spc(spc, ["username"])
        await world.secretsync(name, spc, {"username": "user"})
        secret = await until(lambda: world.secret(name), what="a Secret from the new leader")
        assert decoded(secret) == {"user": "app-user"}
    finally:
        world.controller = second  # the session's controller from now on


async def _is(world: World, prefix: str) -> bool:
    return (await _holder(world)).startswith(prefix)


async def _renew_time(world: World) -> str:
    lease = await world.admin.get(Lease, LEASE_NAME, namespace="kube-system")
    return str(lease.spec.renewTime if lease.spec else "")


async def _writes(world: World, name: str, seen: list[str]) -> None:
    """Every ADDED/MODIFIED of Secret `name` (one writer: exactly one ADDED, no MODIFIED)."""
    async for event, obj in world.admin.watch(Secret, namespace=NAMESPACE):
        if obj.metadata is not None and obj.metadata.name == name:
            seen.append(event)


async def test_leader_lost_mid_sync(world: World) -> None:
    """The Lease handed to the candidate while the leader's provider call is held in Key
    Vault (2.5 s) and before the leader's next renewal (every 8 s, so only the fence can
    see it): the old leader exits 1 without writing the Secret or the status; the new leader
    finishes the sync; the Secret is written once."""
    world.controller.stop()
    common = (f"--token-request-audience={AUDIENCE}", f"--rotation-poll-interval={POLL}s")
    old = SyncControllerProcess(
        world.kubeconfig,
        world.provider.socket.parent,
        world.root / "midsync-old.log",
        *common,
        "--leader-elect",
        "--leader-election-lease-duration=15s",
        "--leader-election-renew-deadline=12s",
        "--leader-election-retry-period=8s",
        pod_name="midsync-old",
    ).start()
    new = world.controller.again(world.root / "midsync-new.log")
    spc, name, value = unique("spc"), unique("midsync"), unique("midval")
    world.emulator.set_secret(VAULT, value, "right")
    await world.spc(spc, [value])
    seen: list[str] = []
    watching = asyncio.create_task(_writes(world, name, seen))
    try:
        await until(lambda: _is(world, "midsync-old"), what="the old leader")
        new.start()
        assert new.proc is not None and old.proc is not None
        renewed = await _renew_time(world)
        await until(
            lambda: _renewed_since(world, renewed), within=10, what="a renewal by the old leader"
        )
        world.emulator.add_fault(service="kv", vault=VAULT, path=f"/secrets/{value}", delay_ms=2500)
        await world.secretsync(name, spc, {value: "v"})

        async def fetching() -> bool:
            return any(f["hits"] for f in world.emulator.faults())

        await until(fetching, what="the old leader's provider call held in Key Vault")
        stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        await world.admin.patch(  # taken over, as after a stall the old one did not notice
            Lease,
            LEASE_NAME,
            {"spec": {"holderIdentity": f"{new.identity}", "renewTime": stamp}},
            namespace="kube-system",
            patch_type=PatchType.MERGE,
        )
        assert await asyncio.to_thread(old.proc.wait, 6) == 1  # before its next renewal
        text = old.text()
        assert f"leader election lost: lease kube-system/{LEASE_NAME} is held by" in text
        assert f"Secret {NAMESPACE}/{name}" not in text  # neither created nor updated

        async def right() -> Secret | None:
            secret = await world.secret(name)
            return secret if secret is not None and decoded(secret) == {"v": "right"} else None

        await until(right, within=10, what="the Secret from the new leader")
        assert f"created Secret {NAMESPACE}/{name}" in new.text()
        await asyncio.sleep(POLL + 1)  # a poll later: still written once
        assert seen == ["ADDED"], seen
    finally:
        watching.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watching
        world.emulator.clear_faults()
        old.stop()
        world.controller = new  # the session's controller from now on


async def _renewed_since(world: World, renew_time: str) -> bool:
    return await _renew_time(world) != renew_time
