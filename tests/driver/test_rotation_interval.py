"""A SecretProviderClass's own rotation interval against the real pieces (kube-apiserver, this
driver under its ServiceAccount, provider_azure, the Key Vault emulator): the annotation
shortens and lengthens the interval, `--min-rotation-poll-interval` bounds it, and an invalid
value gives one Warning event per value and falls back to `--rotation-poll-interval`."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from lightkube import AsyncClient
from lightkube.types import PatchType

from csi_driver.intervals import INTERVAL_ANNOTATION, INVALID_INTERVAL
from csi_driver.kube import SecretProviderClass

from . import test_rotation as rot
from .conftest import SpcFactory, unique
from .test_rotation import VAULT, DriverFactory, Node, OnePod, events, kv_gets, wait_for, wi_spc

# the rotation tier's fixtures: the emulator seeded with its identities, provider_azure, drivers
# with a short interval, kubelet stand-ins, and the no-mount-left check
world = rot.world
vault_hosts = rot.vault_hosts
provider = rot.provider
start_driver = rot.start_driver
make_node = rot.make_node
_no_mount_left = rot._no_mount_left

Annotated = Callable[..., Awaitable[OnePod]]


async def annotate(client: AsyncClient, namespace: str, spc: str, value: str) -> None:
    await client.patch(
        SecretProviderClass,
        spc,
        {"metadata": {"annotations": {INTERVAL_ANNOTATION: value}}},
        namespace=namespace,
        patch_type=PatchType.MERGE,
    )


@pytest.fixture
def annotated_pod(
    world: Any,
    admin_client: AsyncClient,
    namespace: str,
    start_driver: DriverFactory,
    make_node: Callable[[Any], Node],
    make_spc: SpcFactory,
) -> Annotated:
    """One pod mounting one fresh secret from an SPC annotated before the mount."""

    async def make(value: str, *flags: str, interval: float) -> OnePod:
        name = unique("rot-iv")
        world.set_secret(VAULT, name, "one")
        spc = await wi_spc(make_spc, name)
        await annotate(admin_client, namespace, spc, value)
        driver = start_driver(*flags, interval=interval)
        node = make_node(driver)
        return OnePod(driver, node, await node.pod(spc), name, spc)

    return make


async def test_annotation_shortens_the_interval(world: Any, annotated_pod: Annotated) -> None:
    """Global 60 s; the class asks for 1 s (the minimum is 500 ms): it rotates within seconds."""
    p = await annotated_pod("1s", "--min-rotation-poll-interval=500ms", interval=60)
    path = p.vol.target / p.name
    assert path.read_text() == "one"
    world.set_secret(VAULT, p.name, "two")
    # the interval is seen within 5 s of the mount (LOOK_EVERY), then ticks every 1 s
    await wait_for(lambda: path.read_text() == "two", 9, "rotated on the class's 1 s")
    world.set_secret(VAULT, p.name, "three")
    await wait_for(lambda: path.read_text() == "three", 2.5, "again within the class's 1 s")
    assert "interval 1s" in p.driver.logs()


async def test_annotation_lengthens_the_interval_and_the_republish_throttle(
    world: Any, annotated_pod: Annotated
) -> None:
    """Global 1 s; the class asks for 1 h: neither ticks nor kubelet's republishes call."""
    p = await annotated_pod("1h", interval=1)
    world.clear_requests()
    world.set_secret(VAULT, p.name, "two")
    for _ in range(4):
        await p.node.kubelet.publish(p.vol)  # requiresRepublish: every kubelet sync
        await asyncio.sleep(1)
    assert kv_gets(world, p.name) == 0
    assert (p.vol.target / p.name).read_text() == "one"


async def test_minimum_bounds_the_annotation(
    world: Any, admin_client: AsyncClient, annotated_pod: Annotated
) -> None:
    """The class asks for 1 s, the node allows 30 s at least: 30 s it is, and the pod is told."""
    p = await annotated_pod("1s", "--min-rotation-poll-interval=30s", interval=60)
    got = await wait_for(lambda: events(admin_client, p.vol, INVALID_INTERVAL), 5, "Warning")
    (event,) = got
    assert event.type == "Warning"
    assert "below the driver's --min-rotation-poll-interval; using 30s" in (event.message or "")
    world.clear_requests()
    world.set_secret(VAULT, p.name, "two")
    await asyncio.sleep(4)
    assert kv_gets(world, p.name) == 0


async def test_invalid_value_warns_once_per_value_and_falls_back(
    world: Any, admin_client: AsyncClient, namespace: str, annotated_pod: Annotated
) -> None:
    """Global 1 s, `often` is no duration: one Warning (not one a tick), rotation on 1 s; a
    new bad value is said once more."""
    p = await annotated_pod("often", interval=1)
    path = p.vol.target / p.name
    world.set_secret(VAULT, p.name, "two")
    await wait_for(lambda: path.read_text() == "two", 5, "rotated on the global 1 s")
    await asyncio.sleep(2)  # more ticks: still one event
    (event,) = await events(admin_client, p.vol, INVALID_INTERVAL)
    assert event.type == "Warning"
    message = event.message or ""
    assert f'annotation {INTERVAL_ANNOTATION}="often" on secretproviderclass' in message
    assert message.endswith(
        "not a Go duration (such as 90s, 10m, 1h30m); using --rotation-poll-interval"
    )
    await annotate(admin_client, namespace, p.spc, "0")
    await wait_for(
        lambda: _count(events(admin_client, p.vol, INVALID_INTERVAL), 2), 5, "second Warning"
    )


async def _count(found: Awaitable[list[Any]], n: int) -> bool:
    return len(await found) == n
