"""A publish that finds its provider missing or not answering waits for it, within a bound.

After a node boots, or while the provider's DaemonSet rolls, the driver often serves before the
provider does. Upstream fails such a publish at once and kubelet's backoff then grows towards
two minutes, so pods sit in ContainerCreating long after the provider is back. Here the publish
waits (`--provider-wait-timeout`): it tells the pod once (a Normal event), polls the provider's
Version until something answers, calls Mount again, and records how long it waited. After the
deadline the error is exactly the one a publish without waiting returns.

Only "nobody answers" is waited for (errors.ProviderUnavailable: no socket, connection refused,
the provider gone mid-call); an answer, even an error, is the provider's word and returned.
Mount is safe to repeat: a provider only reads.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from .errors import ProviderError, ProviderUnavailable
from .events import EventSink, NoEvents, PodRef
from .metrics import OS_TYPE, Metrics
from .provider_client import MountResult, ProviderClients

log = logging.getLogger(__name__)

COMPONENT = "secrets-store-csi-driver"  # the pod events' source
WAITING = "WaitingForProvider"  # the pod event's reason
POLL = 0.25  # seconds between Version probes of a missing provider
# kubelet cancels a CSI call after 2 minutes: a Mount after a wait gets what is left of this
KUBELET_BUDGET = 110.0
MIN_MOUNT_TIMEOUT = 5.0


class ProviderWait:
    """Mount through `providers`, waiting up to `timeout` seconds for a provider to answer."""

    def __init__(
        self,
        providers: ProviderClients,
        *,
        timeout: float,
        metrics: Metrics,
        events: EventSink | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.providers = providers
        self.timeout = timeout
        self.metrics = metrics
        self.events: EventSink = events if events is not None else NoEvents()
        self.clock = clock
        self.sleep = sleep

    async def mount(
        self,
        provider: str,
        pod: PodRef,
        attributes: str,
        secrets: str,
        target_path: str,
        permission: str,
    ) -> MountResult:
        started = self.clock()
        deadline = started + self.timeout
        waited_until: float | None = None
        try:
            while True:
                try:
                    if waited_until is None:
                        return await self.providers.mount(
                            provider, attributes, secrets, target_path, permission
                        )
                    return await self.providers.mount(
                        provider,
                        attributes,
                        secrets,
                        target_path,
                        permission,
                        deadline=self._left(started),
                    )
                except ProviderUnavailable as e:
                    if self.clock() >= deadline:
                        raise
                    if waited_until is None:
                        await self._tell(provider, pod, e)
                    await self._answering(provider, deadline)
                    waited_until = self.clock()
        finally:
            if waited_until is not None:
                self.metrics.provider_wait_duration.labels(provider, OS_TYPE).observe(
                    waited_until - started
                )

    def _left(self, started: float) -> float:
        return max(MIN_MOUNT_TIMEOUT, KUBELET_BUDGET - (self.clock() - started))

    async def _tell(self, provider: str, pod: PodRef, e: ProviderError) -> None:
        log.info(
            "pod %s/%s: waiting up to %.0fs for provider %s (%s)",
            pod.namespace,
            pod.name,
            self.timeout,
            provider,
            e.message,
        )
        await self.events.record(
            pod,
            "Normal",
            WAITING,
            f"waiting for provider {provider} (up to {self.timeout:.0f}s): {e.message}",
        )

    async def _answering(self, provider: str, deadline: float) -> None:
        """Returns once the provider answers Version (any answer), or at the deadline."""
        while (left := deadline - self.clock()) > 0:
            await self.sleep(min(POLL, left))
            try:
                await self.providers.version(provider, deadline=max(0.1, min(1.0, left)))
                return
            except ProviderUnavailable:
                continue
            except ProviderError:
                return  # it answers (with an error): let Mount say what it says
