"""One active replica: a second controller waits on the Lease; when the leader's Lease is
taken from it, it stops (exit 1) and the candidate takes over within the lease duration."""

from __future__ import annotations

import asyncio

import pytest
from lightkube import ApiError
from lightkube.resources.coordination_v1 import Lease
from lightkube.types import PatchType

from sync_controller.leader import LEASE_NAME
from testbed.sync_controller import SyncControllerProcess

from .conftest import AUDIENCE, POLL, World, decoded, unique, until

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
