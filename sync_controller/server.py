"""Wiring: Kubernetes client, provider client, metrics and probes, then (as leader) the
controller. Losing the Lease ends the process (exit 1), as controller-runtime's does: the
Deployment starts it again as a candidate."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import signal
import socket
from urllib.parse import urlsplit

from lightkube import AsyncClient, KubeConfig
from prometheus_client import start_http_server

from csi_driver.events import EventRecorder
from csi_driver.kube import use_grants
from csi_driver.provider_client import ProviderClients
from csi_driver.secret_writer import SecretWriter

from .api import FIELD_MANAGER
from .config import Config
from .controller import Controller
from .fetch import Fetcher
from .grants import GRANTS
from .leader import Elector, LeaderLost, Timing
from .reconcile import Reconciler, claim
from .restart import RestartController
from .tokens import Tokens

log = logging.getLogger(__name__)


def _host_port(addr: str) -> tuple[str, int]:
    parts = urlsplit("//" + addr)
    return parts.hostname or "0.0.0.0", parts.port or 0


async def _probe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(Exception):
        await reader.readline()
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
        await writer.drain()
    writer.close()


def build(
    config: Config, client: AsyncClient, elector: Elector | None = None
) -> tuple[Controller, Reconciler]:
    """The controller and its reconciler; with `elector`, every write is fenced by it."""
    fence = elector.confirm if elector is not None else None
    providers = ProviderClients((config.provider_volume,), config.max_recv, config.provider_timeout)
    share = min(config.poll / 2, 60.0) if config.poll > 0 else 5.0
    fetcher = Fetcher(
        providers, Tokens(client, config.audiences), config.pod_name, config.pod_uid, share
    )
    events = EventRecorder(client, FIELD_MANAGER, "", dedupe=True, log_as="secretsync")
    writer = SecretWriter(client, claim(fence))
    controller = Controller(client, config.poll, config.workers)
    if fence is not None:
        controller.fence = fence
    reconciler = Reconciler(controller, fetcher, writer, events, secrets.token_bytes(32))
    return controller, reconciler


async def run(config: Config) -> int:
    use_grants(GRANTS)
    kube = KubeConfig.from_file(config.kubeconfig) if config.kubeconfig else KubeConfig.from_env()
    client = AsyncClient(config=kube, field_manager=FIELD_MANAGER)
    if config.metrics_addr not in ("", "0"):
        start_http_server(_host_port(config.metrics_addr)[1], _host_port(config.metrics_addr)[0])
    probe = None
    if config.probe_addr not in ("", "0"):
        host, port = _host_port(config.probe_addr)
        probe = await asyncio.start_server(_probe, host, port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    identity = f"{config.pod_name or socket.gethostname()}_{os.getpid()}"
    elector = Elector(
        client,
        config.leader_namespace,
        identity,
        Timing(config.lease_duration, config.renew_deadline, config.retry_period),
    )
    try:
        return await _lead(config, client, elector, stop)
    finally:
        if probe is not None:
            probe.close()
        await client.close()


async def _lead(config: Config, client: AsyncClient, elector: Elector, stop: asyncio.Event) -> int:
    stopping = asyncio.create_task(stop.wait())
    if config.leader_elect:
        acquiring = asyncio.create_task(elector.acquire())
        await asyncio.wait({acquiring, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if stop.is_set():
            acquiring.cancel()
            return 0
    controller, reconciler = build(config, client, elector if config.leader_elect else None)
    tasks = {asyncio.create_task(controller.run(reconciler)), stopping}
    if config.restart_on_change:
        restarts = RestartController(
            client,
            EventRecorder(client, FIELD_MANAGER, "", dedupe=True),
            controller.metrics,
            config.restart_min_interval,
            config.restart_max_in_flight,
        )
        tasks.add(asyncio.create_task(restarts.run()))
    if config.leader_elect:
        tasks.add(asyncio.create_task(elector.hold()))
    done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    for t in pending:
        t.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    for t in done:
        if t is not stopping and isinstance(t.exception(), LeaderLost):
            log.error("leader election lost: %s", t.exception())
            return 1
    if config.leader_elect:
        await elector.release()
    return 0
