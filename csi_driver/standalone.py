"""Standalone mode: the driver's publish and rotation without Kubernetes (VMs, Nomad, compose).

`python -m csi_driver.standalone --spc=spc.yaml --target-path=/run/secrets/app` (or
`secrets-store-csi-driver standalone ...`) reads a SecretProviderClass manifest, the one users
apply to a cluster, and does what kubelet's NodePublishVolume asks of the driver, through the
same NodeService.publish: tmpfs at the target (a private 0700 directory when not root), the
provider's Mount over its socket, the atomic write. The rotation Reconciler then keeps the files
fresh; its plans come from the files instead of a pod (FilePlans), so edits to the SPC or the
secrets file are picked up on the next tick. SIGTERM/SIGINT unpublish: nothing stays
mounted and the target is left empty.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import stat
import sys
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry

from . import __version__, metrics
from .config import (
    DEFAULT_MAX_RECV,
    Flag,
    FlagError,
    flagset,
    positive,
    provider_paths,
    tmpfs_size,
)
from .errors import SECRET_REF_NOT_FOUND, DriverError, ProviderError, RotationError
from .events import NoEvents
from .intervals import INTERVAL_ANNOTATION
from .kube import get_spc
from .manifests import (
    SECRET_ENV,
    FileSpcSource,
    StandaloneError,
    check_target,
    load_secrets,
)
from .node import NodeService
from .plans import Batch, Failed, Plan, plain_request
from .provider_client import ProviderClients
from .rotation import Reconciler
from .spcps import NoStatus, PodStatusRecord
from .volumes import SPC_FIELD, PublishRequest, pod_context

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StandaloneConfig:
    spc_file: str
    target_path: str
    secrets_file: str = ""
    provider_paths: tuple[str, ...] = ("/var/run/secrets-store-csi-providers",)
    enable_secret_rotation: bool = True
    rotation_poll_interval: float = 120.0
    min_rotation_poll_interval: float = 60.0
    metrics_addr: str = ""
    max_call_recv_msg_size: int = DEFAULT_MAX_RECV
    provider_timeout: float = 60.0
    tmpfs_size: int = tmpfs_size("", DEFAULT_MAX_RECV)
    pod_name: str = ""
    pod_namespace: str = ""
    service_account: str = "default"
    log_format_json: bool = False
    verbosity: int = 0


class FilePlans:
    """Rotation plans of the one volume: SPC and secrets re-read from their files each tick."""

    def __init__(
        self, spcs: FileSpcSource, secrets_file: str, context: Mapping[str, str], sa: str
    ) -> None:
        self.spcs = spcs
        self.secrets_file = secrets_file
        self.context = dict(context)
        self.service_account = sa

    async def plans(self, due: Sequence[PodStatusRecord]) -> Batch:
        batch = Batch()
        for record in due:
            try:
                batch.plans.append(await self._plan(record))
            except RotationError as e:
                batch.failed.append(Failed(record, e))
        return batch

    async def prepare(self) -> None:
        return None

    async def request(self, plan: Plan) -> tuple[str, str]:
        return plain_request(plan)

    async def _plan(self, record: PodStatusRecord) -> Plan:
        spc = await get_spc(self.spcs, record.namespace, record.spc_name, RotationError)
        try:
            secrets = await asyncio.to_thread(load_secrets, self.secrets_file)
        except StandaloneError as e:
            raise RotationError(str(e), SECRET_REF_NOT_FOUND) from None
        return Plan(
            record=record,
            provider=spc.provider,
            spc_parameters=spc.parameters,
            volume_context=dict(self.context),
            secrets=secrets,
            service_account=self.service_account,
            secret_ref=self.secrets_file,
        )


# ---- run -----------------------------------------------------------------------------------


class Standalone:
    def __init__(self, config: StandaloneConfig) -> None:
        self.config = config
        self.target = os.path.abspath(config.target_path)
        self.spcs = FileSpcSource(config.spc_file)
        self.secrets = load_secrets(config.secrets_file)
        check_target(self.target)
        self.use_tmpfs = os.geteuid() == 0
        self.providers = ProviderClients(
            config.provider_paths, config.max_call_recv_msg_size, config.provider_timeout
        )
        self.metrics = metrics.Metrics(CollectorRegistry())
        self.node = NodeService(
            node_id=socket.gethostname(),
            providers=self.providers,
            spcs=self.spcs,
            client=None,
            metrics=self.metrics,
            tmpfs_size=config.tmpfs_size,
            status=NoStatus(),
            use_tmpfs=self.use_tmpfs,
        )
        spc = self.spcs.spec
        self.volume_id = f"standalone-{spc.namespace}-{spc.name}"
        self.volume_context = {
            SPC_FIELD: spc.name,
            **pod_context(
                config.pod_name or socket.gethostname(),
                config.pod_namespace or spc.namespace,
                str(uuid.uuid5(uuid.NAMESPACE_URL, f"file://{self.target}")),
                config.service_account,
            ),
        }
        self.rotation: Reconciler | None = None
        self._metrics_server: Any = None
        self._mode = stat.S_IMODE(os.stat(self.target).st_mode)

    def _check_provider(self) -> None:
        provider = self.spcs.spec.provider
        try:
            self.providers.socket_path(provider)
        except ProviderError as e:
            dirs = ", ".join(self.config.provider_paths)
            raise StandaloneError(
                f"{e.message}: no {provider}.sock in {dirs} (is the provider running? "
                "--provider-volume / --additional-provider-volume-paths)"
            ) from None

    async def publish(self) -> None:
        self._check_provider()
        spc = self.spcs.spec
        if self.use_tmpfs:
            log.info(
                "standalone: running as root: mounting a tmpfs (%d bytes, nosuid,nodev,noexec) "
                "at %s",
                self.config.tmpfs_size,
                self.target,
            )
        else:
            os.chmod(self.target, 0o700)
            log.warning(
                "standalone: not root, so NO tmpfs: files are written to the private (0700) "
                "directory %s on its own filesystem, which may be disk-backed",
                self.target,
            )
        await self.node.publish(
            PublishRequest(
                volume_id=self.volume_id,
                target_path=self.target,
                has_capability=True,
                readonly=True,
                volume_context=self.volume_context,
                secrets=self.secrets,
            )
        )
        record = self.node.mounts.get(self.target)
        log.info(
            "standalone: published spc %s/%s (provider %s) at %s: %d objects",
            spc.namespace,
            spc.name,
            spc.provider,
            self.target,
            len(record.objects) if record else 0,
        )

    def start_rotation(self) -> None:
        if not self.config.enable_secret_rotation:
            log.info("standalone: rotation disabled")
            return
        self.rotation = Reconciler(
            mounts=self.node.mounts,
            providers=self.providers,
            spcs=self.spcs,
            metrics=self.metrics,
            plans=FilePlans(
                self.spcs,
                self.config.secrets_file,
                self.volume_context,
                self.config.service_account,
            ),
            events=NoEvents(),
            status=NoStatus(),
            interval=self.config.rotation_poll_interval,
            min_interval=self.config.min_rotation_poll_interval,
            share=False,
        )
        self.rotation.start()
        log.info(
            "standalone: rotation every %.1fs (--rotation-poll-interval, unless the SPC file's "
            "%s annotation says otherwise)",
            self.config.rotation_poll_interval,
            INTERVAL_ANNOTATION,
        )

    async def stop(self) -> None:
        if self.rotation is not None:
            await self.rotation.stop()
        try:
            if self.target in self.node.mounts:  # abspath: already normalised
                await self.node.unpublish(self.volume_id, self.target)
                log.info("standalone: unpublished %s; nothing left mounted", self.target)
        finally:
            with contextlib.suppress(FileExistsError):
                os.mkdir(self.target)  # unpublish removes the target, as kubelet expects
            with contextlib.suppress(OSError):
                os.chmod(self.target, self._mode)
            await self.providers.close()
            if self._metrics_server is not None:
                self._metrics_server.shutdown()

    async def run(self, stop: asyncio.Event) -> None:
        if self.config.metrics_addr:
            self._metrics_server = metrics.serve(self.config.metrics_addr, self.metrics.registry)
            log.info("standalone: metrics on %s/metrics", self.config.metrics_addr)
        try:
            publish = asyncio.ensure_future(self.publish())
            stopped = asyncio.ensure_future(stop.wait())
            await asyncio.wait({publish, stopped}, return_when=asyncio.FIRST_COMPLETED)
            if not publish.done():
                log.info("standalone: shutdown signal during the first publish")
            await publish  # a publish is never cut in half: it completes or rolls back
            stopped.cancel()
            if not stop.is_set():
                self.start_rotation()
                await stop.wait()
            log.info("standalone: received shutdown signal")
        finally:
            await self.stop()


async def run(config: StandaloneConfig) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        app = Standalone(config)
        await app.run(stop)
    except StandaloneError as e:
        log.error("standalone: %s", e)
        return 1
    except DriverError as e:
        log.error("standalone: publish failed (%s): %s", e.error_type, e)
        return 1
    return 0


# ---- flags ---------------------------------------------------------------------------------


_STANDALONE_FLAGS = (
    Flag("spc", "", "SecretProviderClass manifest file (YAML, as applied to a cluster)"),
    Flag("target-path", "", "directory to mount into (must exist and be empty)"),
    Flag(
        "node-publish-secret-file",
        "",
        "nodePublishSecretRef data: YAML/JSON map or a Secret manifest "
        f"(else JSON in ${SECRET_ENV})",
    ),
    Flag("pod-name", "", "pod name sent to the provider (default: the host name)"),
    Flag("pod-namespace", "", "pod namespace sent to the provider (default: the SPC's)"),
    Flag("service-account", "default", "service account name sent to the provider"),
)
# Standalone's own defaults for shared flags: rotation on, no metrics port unless asked.
_STANDALONE_DEFAULTS = {"enable-secret-rotation": True, "metrics-addr": ""}


def parse_args(argv: Sequence[str]) -> StandaloneConfig | None:
    """None for --version; raises FlagError on bad flags."""
    values, rest = flagset(
        "secrets-store-csi-driver standalone", _STANDALONE_FLAGS, _STANDALONE_DEFAULTS
    ).parse(argv)
    if rest:
        raise FlagError(f"unexpected arguments: {' '.join(rest)}")
    if values["version"]:
        return None
    for required in ("spc", "target-path"):
        if not values[required]:
            raise FlagError(f"-{required} is required")
    if values["rotation-poll-interval"] <= 0:
        raise FlagError("-rotation-poll-interval must be positive")
    return StandaloneConfig(
        spc_file=values["spc"],
        target_path=values["target-path"],
        secrets_file=values["node-publish-secret-file"],
        provider_paths=provider_paths(values),
        enable_secret_rotation=values["enable-secret-rotation"],
        rotation_poll_interval=values["rotation-poll-interval"],
        min_rotation_poll_interval=positive(values, "min-rotation-poll-interval"),
        metrics_addr=values["metrics-addr"],
        max_call_recv_msg_size=values["max-call-recv-msg-size"],
        provider_timeout=values["provider-timeout"],
        tmpfs_size=tmpfs_size(values["tmpfs-size"], values["max-call-recv-msg-size"]),
        pod_name=values["pod-name"],
        pod_namespace=values["pod-namespace"],
        service_account=values["service-account"],
        log_format_json=values["log-format-json"],
        verbosity=values["v"],
    )


def main(argv: Sequence[str] | None = None) -> int:
    try:
        config = parse_args(sys.argv[1:] if argv is None else argv)
    except FlagError as e:
        print(e, file=sys.stderr)
        return 2
    if config is None:
        print(json.dumps({"version": __version__, "mode": "standalone"}))
        return 0
    from prometheus_client import disable_created_metrics

    from . import logs

    logs.setup(config.log_format_json, config.verbosity)
    disable_created_metrics()  # type: ignore[no-untyped-call]
    return asyncio.run(run(config))


if __name__ == "__main__":
    sys.exit(main())
