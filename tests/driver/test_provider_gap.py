"""A provider that is late, killed mid-Mount or answering with errors: the driver as a process,
the fake provider as a process, a real API server (issue 14, the publish side)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest
from grpc import aio
from lightkube import AsyncClient
from lightkube.resources.core_v1 import Event, Pod

from testbed.driver import DriverProcess
from testbed.kubelet import Kubelet, PodVolume
from testbed.provider import ProviderProcess

from .conftest import SpcFactory, unique

WAIT = 20.0  # this file's --provider-wait-timeout


@pytest.fixture(scope="module")
def waiting_driver(
    root: Path, provider_dirs: tuple[Path, Path], driver_kubeconfig: Path
) -> Iterator[DriverProcess]:
    d = DriverProcess(
        root,
        kubeconfig=driver_kubeconfig,
        provider_dirs=provider_dirs,
        name="gap-driver",
        extra=(f"--provider-wait-timeout={WAIT:.0f}s",),
    )
    d.start()
    yield d
    d.stop()


@pytest.fixture(scope="module")
async def gap_kubelet(
    admin_client: AsyncClient, waiting_driver: DriverProcess, root: Path
) -> AsyncIterator[Kubelet]:
    k = Kubelet(admin_client, root / "gap-kubelet", str(waiting_driver.socket))
    yield k
    await k.close()


async def _volume(kubelet: Kubelet, namespace: str, spc: str) -> PodVolume:
    pod = await kubelet.create_pod(namespace, unique("gap"), spc)
    return await kubelet.volume(pod)


async def _events(client: AsyncClient, pod: Pod, reason: str) -> list[Event]:
    assert pod.metadata is not None
    out = []
    async for e in client.list(Event, namespace=pod.metadata.namespace):
        if e.involvedObject.uid == pod.metadata.uid and e.reason == reason:
            out.append(e)
    return out


def _provider(provider_dirs: tuple[Path, Path], root: Path, name: str) -> ProviderProcess:
    return ProviderProcess.fake(provider_dirs[0] / f"{name}.sock", root / f"{name}.log")


async def test_publish_waits_for_a_late_provider(
    gap_kubelet: Kubelet,
    waiting_driver: DriverProcess,
    make_spc: SpcFactory,
    namespace: str,
    admin_client: AsyncClient,
    provider_dirs: tuple[Path, Path],
    root: Path,
) -> None:
    name = unique("late")
    spc = await make_spc({"fake.files": {"a": "late"}}, provider=name)
    v = await _volume(gap_kubelet, namespace, spc)
    late = _provider(provider_dirs, root, name)
    publish = asyncio.create_task(gap_kubelet.publish(v))
    await asyncio.sleep(1.5)
    assert not publish.done()
    await asyncio.to_thread(late.start)
    served = time.monotonic()
    try:
        await publish
        assert time.monotonic() - served < 2.0, "the publish did not follow the provider"
        assert (v.target / "a").read_text() == "late"
        events = await _events(admin_client, v.pod, "WaitingForProvider")
        assert len(events) == 1 and events[0].type == "Normal", events
        assert (events[0].message or "").startswith(f"waiting for provider {name}")
        assert waiting_driver.metric("provider_wait_duration_sec_count", provider=name) == 1
        assert waiting_driver.metric("provider_wait_duration_sec_sum", provider=name) >= 1.4
        assert waiting_driver.metric("node_publish_error_total", provider=name) == 0
    finally:
        late.stop()
        await gap_kubelet.unpublish(v)


async def test_provider_killed_mid_mount(
    gap_kubelet: Kubelet,
    waiting_driver: DriverProcess,
    make_spc: SpcFactory,
    namespace: str,
    provider_dirs: tuple[Path, Path],
    root: Path,
) -> None:
    """SIGKILL while Mount is in flight (the socket file stays, nobody listens): the publish
    waits for the restarted provider and succeeds."""
    name = unique("killed")
    spc = await make_spc(
        {"fake.files": {"a": "x"}, "fake.mode": "slow", "fake.delay": "1"}, provider=name
    )
    v = await _volume(gap_kubelet, namespace, spc)
    p = _provider(provider_dirs, root, name)
    await asyncio.to_thread(p.start)
    try:
        publish = asyncio.create_task(gap_kubelet.publish(v))
        await asyncio.sleep(0.5)
        p.kill()
        await asyncio.sleep(4.0)  # longer than gRPC's own retries (3 attempts, ~1 s apart)
        assert not publish.done()
        await asyncio.to_thread(p.start)
        await publish
        assert (v.target / "a").read_text() == "x"
        assert waiting_driver.metric("node_publish_error_total", provider=name) == 0
    finally:
        p.stop()
        await gap_kubelet.unpublish(v)


async def test_socket_answers_with_errors_is_not_waited_for(
    gap_kubelet: Kubelet,
    make_spc: SpcFactory,
    namespace: str,
    provider_dirs: tuple[Path, Path],
) -> None:
    """A socket whose server knows no provider service (Version and Mount: Unimplemented):
    the provider's answer comes back at once, not after the wait."""
    name = unique("mute")
    spc = await make_spc({"fake.files": {"a": "x"}}, provider=name)
    v = await _volume(gap_kubelet, namespace, spc)
    server = aio.server()
    server.add_insecure_port(f"unix://{provider_dirs[0] / name}.sock")
    await server.start()
    try:
        started = time.monotonic()
        with pytest.raises(aio.AioRpcError) as info:
            await gap_kubelet.publish(v)
        assert time.monotonic() - started < WAIT / 2
        assert info.value.code() == grpc.StatusCode.UNKNOWN
        assert "code = Unimplemented" in (info.value.details() or ""), info.value.details()
    finally:
        await server.stop(0)
