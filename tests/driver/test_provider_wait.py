"""provider_wait.ProviderWait on fake time: a publish waits for a provider nobody answers on,
tells the pod once, records the wait, and after the deadline fails with the plain error."""

from __future__ import annotations

from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from csi_driver.errors import ProviderError, ProviderUnavailable
from csi_driver.events import PodRef
from csi_driver.metrics import Metrics
from csi_driver.provider_client import MountResult
from csi_driver.provider_wait import KUBELET_BUDGET, WAITING, ProviderWait

ABSENT = 'error connecting to provider "azure": provider not found: provider "azure"'
POD = PodRef("p", "ns", "uid-1")
OK = MountResult(object_versions={"secret/a": "v1"}, files={})


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds


class Providers:
    """Answers Mount/Version from scripts; each entry is an exception to raise or None (ok)."""

    def __init__(
        self, clock: Clock, up_at: float, *, version_error: ProviderError | None = None
    ) -> None:
        self.clock = clock
        self.up_at = up_at  # the provider answers from then on
        self.version_error = version_error
        self.mounts: list[tuple[float, float | None]] = []  # (when, deadline)
        self.versions = 0

    async def mount(self, provider: str, *args: Any, deadline: float | None = None) -> MountResult:
        self.mounts.append((self.clock.now, deadline))
        if self.clock.now < self.up_at:
            raise ProviderUnavailable(ABSENT)
        return OK

    async def version(self, provider: str, deadline: float = 5) -> str:
        self.versions += 1
        if self.clock.now < self.up_at:
            raise ProviderUnavailable(ABSENT)
        if self.version_error is not None:
            raise self.version_error
        return "1"


class Events:
    def __init__(self) -> None:
        self.seen: list[tuple[PodRef, str, str, str]] = []

    async def record(self, pod: PodRef, kind: str, reason: str, message: str) -> None:
        self.seen.append((pod, kind, reason, message))


def _wait(providers: Providers, clock: Clock, timeout: float) -> tuple[ProviderWait, Events]:
    events = Events()
    wait = ProviderWait(
        providers,  # type: ignore[arg-type]
        timeout=timeout,
        metrics=Metrics(CollectorRegistry()),
        events=events,
        clock=clock,
        sleep=clock.sleep,
    )
    return wait, events


def _waited(wait: ProviderWait, provider: str = "azure") -> tuple[float, float]:
    """(count, sum) of the wait histogram."""
    registry = wait.metrics.registry
    labels = {"provider": provider, "os_type": "linux"}
    count = registry.get_sample_value("provider_wait_duration_sec_count", labels) or 0.0
    total = registry.get_sample_value("provider_wait_duration_sec_sum", labels) or 0.0
    return count, total


async def _mount(wait: ProviderWait) -> MountResult:
    return await wait.mount("azure", POD, "{}", "null", "/t", '"420"')


async def test_waits_for_a_provider_that_comes_up() -> None:
    clock = Clock()
    providers = Providers(clock, up_at=10.0)
    wait, events = _wait(providers, clock, timeout=60)
    assert await _mount(wait) == OK
    assert 10.0 <= clock.now < 10.5  # polled, not slept out
    assert [(e[1], e[2]) for e in events.seen] == [("Normal", WAITING)]  # one event
    assert events.seen[0][0] == POD
    assert events.seen[0][3].startswith("waiting for provider azure")
    count, total = _waited(wait)
    assert count == 1 and 10.0 <= total < 10.5
    # the Mount after the wait keeps the publish inside kubelet's budget
    when, deadline = providers.mounts[-1]
    assert deadline is not None and deadline <= KUBELET_BUDGET - when + 1e-9
    assert len(providers.mounts) == 2  # once before, once after: no Mount storm


async def test_after_the_deadline_the_plain_error() -> None:
    clock = Clock()
    wait, events = _wait(Providers(clock, up_at=1e9), clock, timeout=3)
    with pytest.raises(ProviderUnavailable) as e:
        await _mount(wait)
    assert e.value.message == ABSENT
    assert 3.0 <= clock.now < 3.5
    assert len(events.seen) == 1
    count, total = _waited(wait)
    assert count == 1 and 3.0 <= total < 3.5


async def test_no_wait_when_the_timeout_is_zero() -> None:
    clock = Clock()
    wait, events = _wait(Providers(clock, up_at=1e9), clock, timeout=0)
    with pytest.raises(ProviderUnavailable):
        await _mount(wait)
    assert clock.now == 0 and events.seen == [] and _waited(wait) == (0, 0)


async def test_a_provider_that_answers_is_not_waited_for() -> None:
    clock = Clock()

    class Failing(Providers):
        async def mount(
            self, provider: str, *args: Any, deadline: float | None = None
        ) -> MountResult:
            raise ProviderError("rpc error: code = Unknown desc = boom")

    wait, events = _wait(Failing(clock, up_at=0), clock, timeout=60)
    with pytest.raises(ProviderError, match="boom"):
        await _mount(wait)
    assert clock.now == 0 and events.seen == [] and _waited(wait) == (0, 0)


async def test_socket_appears_but_version_fails_mount_is_tried() -> None:
    """Something answers on the socket, if only with an error: Mount says what it says."""
    clock = Clock()
    providers = Providers(
        clock, up_at=2.0, version_error=ProviderError("rpc error: code = Unimplemented desc = ")
    )
    wait, _ = _wait(providers, clock, timeout=60)
    assert await _mount(wait) == OK
    assert 2.0 <= clock.now < 2.5


async def test_provider_gone_mid_mount_is_waited_for_again() -> None:
    """Killed mid-Mount: UNAVAILABLE; the publish waits for the next provider and mounts."""
    clock = Clock()
    providers = Providers(clock, up_at=0)
    calls = 0

    async def flaky(provider: str, *args: Any, deadline: float | None = None) -> MountResult:
        nonlocal calls
        calls += 1
        if calls == 1:
            providers.up_at = clock.now + 5  # the restarted provider serves 5 s later
            raise ProviderUnavailable("rpc error: code = Unavailable desc = Socket closed")
        return OK

    providers.mount = flaky  # type: ignore[method-assign]
    wait, events = _wait(providers, clock, timeout=60)
    assert await _mount(wait) == OK
    assert calls == 2 and 5.0 <= clock.now < 5.5 and len(events.seen) == 1
