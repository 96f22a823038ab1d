"""Assembles the driver: CSI gRPC server on the endpoint, metrics, SPC watch, recovery."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import stat
from typing import Any

from grpc import aio

from secrets_store_api import csi_pb2_grpc

from . import __version__, metrics
from .config import Config
from .events import EventRecorder, EventSink, NoEvents
from .kube import SpcCache, make_client
from .mounts import MountTable
from .node import NodeService
from .plans import KubePlans
from .provider_client import ProviderClients
from .provider_wait import COMPONENT as NODE_COMPONENT
from .provider_wait import ProviderWait
from .rotation import COMPONENT as ROTATION_COMPONENT
from .rotation import Reconciler
from .secret_sync import SecretSync
from .servicers import IdentityServicer, NodeServicer
from .spcps import ApiStatus
from .startup_taint import StartupTaint

log = logging.getLogger(__name__)


def parse_endpoint(endpoint: str) -> tuple[str, str]:
    """("unix", path) or ("tcp", host:port), as upstream's csi-common ParseEndpoint."""
    lower = endpoint.lower()
    for scheme in ("unix", "tcp"):
        if lower.startswith(scheme + "://"):
            address = endpoint[len(scheme) + 3 :]
            if scheme == "unix" and not address.startswith("/"):
                # upstream's default unix://tmp/csi.sock means /tmp/csi.sock
                address = "/" + address
            if address:
                return scheme, address
    raise ValueError(f"invalid endpoint: {endpoint}")


def _remove_stale_socket(path: str) -> None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise ValueError(f"{path} exists and is not a socket")
    os.unlink(path)


class Driver:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.client = make_client(config.kubeconfig)
        self.spcs = SpcCache(self.client)
        self.providers = ProviderClients(
            config.provider_paths, config.max_call_recv_msg_size, config.provider_timeout
        )
        self.metrics = metrics.Metrics()
        self.mounts = MountTable()
        self.status = ApiStatus(self.client)
        # no API server configured: nothing to sync (publishes report the missing SPC)
        self.sync = (
            SecretSync(self.client, config.node_id, self.metrics, self.mounts)
            if self.client is not None
            else None
        )
        self.rotation = self._reconciler() if config.enable_secret_rotation else None
        self.node = NodeService(
            node_id=config.node_id,
            providers=self.providers,
            spcs=self.spcs,
            client=self.client,
            metrics=self.metrics,
            tmpfs_size=config.tmpfs_size,
            status=self.status,
            mounts=self.mounts,
            share=config.publish_share_provider_calls,
            on_published=self.sync.sync_now if self.sync is not None else None,
            on_republish=self.rotation.republish if self.rotation is not None else None,
            provider_wait=ProviderWait(
                self.providers,
                timeout=config.provider_wait_timeout,
                metrics=self.metrics,
                events=EventRecorder(self.client, NODE_COMPONENT, config.node_id)
                if self.client is not None
                else None,
            ),
        )
        self.server: aio.Server | None = None
        self._metrics_server: Any = None
        self._socket_path = ""
        self._health_task: asyncio.Task[None] | None = None
        self._taint_task: asyncio.Task[None] | None = None

    def _reconciler(self) -> Reconciler:
        config = self.config
        events: EventSink = NoEvents()
        if self.client is not None:
            events = EventRecorder(
                self.client,
                ROTATION_COMPONENT,
                config.node_id,
                failure_level=logging.INFO,
                log_as="rotation",
            )
        return Reconciler(
            mounts=self.mounts,
            providers=self.providers,
            spcs=self.spcs,
            metrics=self.metrics,
            plans=KubePlans(self.client, self.spcs, config.node_id, config.driver_name),
            events=events,
            status=self.status,
            on_rotated=self.sync.sync_now if self.sync is not None else None,
            interval=config.rotation_poll_interval,
            min_interval=config.min_rotation_poll_interval,
            share=config.rotation_share_provider_calls,
        )

    async def start(self) -> None:
        scheme, address = parse_endpoint(self.config.endpoint)
        self.server = aio.server(options=[("grpc.so_reuseport", 0)])
        csi_pb2_grpc.add_IdentityServicer_to_server(
            IdentityServicer(self.config.driver_name, __version__), self.server
        )
        csi_pb2_grpc.add_NodeServicer_to_server(NodeServicer(self.node), self.server)
        # Before the socket: a driver that cannot serve its metrics exits without leaving a
        # csi.sock that looks alive to whoever waits for it.
        if self.config.metrics_addr:
            try:
                self._metrics_server = metrics.serve(
                    self.config.metrics_addr, self.metrics.registry
                )
            except OSError as e:
                raise SystemExit(
                    f"failed to start the metrics server on --metrics-addr="
                    f"{self.config.metrics_addr}: {e.strerror or e}"
                ) from None
        if scheme == "unix":
            os.makedirs(os.path.dirname(address) or "/", exist_ok=True)
            _remove_stale_socket(address)
            self._socket_path = address
            self.server.add_insecure_port(f"unix://{address}")
        else:
            self.server.add_insecure_port(address)
        await self.server.start()
        log.info(
            "driver %s %s listening on %s, node %s",
            self.config.driver_name,
            __version__,
            self.config.endpoint,
            self.config.node_id or "(unset)",
        )
        self.spcs.start()
        await self.node.recover()
        if self.sync is not None:
            self.sync.start()
        if self.rotation is not None:
            self.rotation.start()
        if self.config.provider_health_check:
            self._health_task = asyncio.create_task(self._health_check())
        self._start_taint_removal(scheme, address)

    def _start_taint_removal(self, scheme: str, address: str) -> None:
        config = self.config
        if not config.remove_startup_taint:
            return
        if self.client is None or not config.node_id:
            log.error("--remove-startup-taint needs an API server and --nodeid: taint left alone")
            return
        taint = StartupTaint(
            self.client,
            config.node_id,
            config.driver_name,
            f"unix://{address}" if scheme == "unix" else address,
            self.providers,
            config.startup_taint_providers,
            self.metrics,
            EventRecorder(self.client, NODE_COMPONENT, config.node_id),
        )
        self._taint_task = asyncio.create_task(taint.run(), name="startup-taint")

    async def _health_check(self) -> None:
        while True:
            await asyncio.sleep(self.config.provider_health_check_interval)
            for directory in self.config.provider_paths:
                with contextlib.suppress(OSError):
                    for name in os.listdir(directory):
                        if not name.endswith(".sock"):
                            continue
                        provider = name[: -len(".sock")]
                        try:
                            version = await self.providers.version(provider)
                            log.debug("provider %s healthy, version %s", provider, version)
                        except Exception as e:
                            log.warning("provider %s health check failed: %s", provider, e)

    async def stop(self, grace: float = 5.0) -> None:
        for task in (self._health_task, self._taint_task):
            if task is not None:
                task.cancel()
        if self.rotation is not None:
            await self.rotation.stop()
        if self.server is not None:
            await self.server.stop(grace)
        await self.spcs.stop()
        if self.sync is not None:
            await self.sync.stop()
        await self.providers.close()
        if self.client is not None:
            with contextlib.suppress(Exception):
                await self.client.close()
        if self._metrics_server is not None:
            self._metrics_server.shutdown()
        if self._socket_path:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._socket_path)
        log.info("driver stopped")


async def run(config: Config) -> None:
    driver = Driver(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await driver.start()
    await stop.wait()
    log.info("received shutdown signal")
    await driver.stop()
