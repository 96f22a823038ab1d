"""Standalone mode: the driver's publish and rotation without Kubernetes (VMs, Nomad, compose).

`python -m csi_driver.standalone --spc=spc.yaml --target-path=/run/secrets/app` (or
`secrets-store-csi-driver standalone ...`) reads a SecretProviderClass manifest, the one users
apply to a cluster, and does what kubelet's NodePublishVolume asks of the driver, through the
same NodeService.publish: tmpfs at the target (a private 0700 directory when not root), the
provider's Mount over its socket, the atomic write. The rotation Reconciler then keeps the files
fresh; its plans come from the file instead of a pod (Reconciler.plan_source), so edits to the
SPC or the secrets file are picked up on the next tick. SIGTERM/SIGINT unpublish: nothing stays
mounted and the target is left empty.
"""

from __future__ import annotations

import asyncio
import base64
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

import yaml
from prometheus_client import CollectorRegistry

from . import __version__, metrics
from .errors import DriverError, KubeError, ProviderError
from .goflags import FlagError, FlagSet
from .kube import GROUP, SecretProviderClassSpec
from .node import (
    POD_NAME,
    POD_NAMESPACE,
    POD_SA_NAME,
    POD_UID,
    SPC_FIELD,
    NodeService,
    PublishRequest,
)
from .provider_client import ProviderClients
from .rotation import SECRET_REF_NOT_FOUND, SPC_NOT_FOUND, Plan, Reconciler, RotationError
from .spcps import PodStatusRecord

log = logging.getLogger(__name__)

SECRET_ENV = "SECRETS_STORE_NODE_PUBLISH_SECRET"
API_VERSIONS = (f"{GROUP}/v1", f"{GROUP}/v1alpha1")


class StandaloneError(Exception):
    """Bad input (SPC file, secrets, target, provider socket): one clear line, exit code 1."""


@dataclass(frozen=True)
class StandaloneConfig:
    spc_file: str
    target_path: str
    secrets_file: str = ""
    provider_paths: tuple[str, ...] = ("/var/run/secrets-store-csi-providers",)
    enable_secret_rotation: bool = True
    rotation_poll_interval: float = 120.0
    metrics_addr: str = ""
    max_call_recv_msg_size: int = 4 * 1024 * 1024
    provider_timeout: float = 60.0
    tmpfs_size: int = 16 << 20
    pod_name: str = ""
    pod_namespace: str = ""
    service_account: str = "default"
    log_format_json: bool = False
    verbosity: int = 0


# ---- input ---------------------------------------------------------------------------------


def load_spc(path: str) -> SecretProviderClassSpec:
    """The SecretProviderClass in a manifest file, checked as the API server and a publish
    would check it."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        raise StandaloneError(f"SecretProviderClass file {path}: not found") from None
    except OSError as e:
        raise StandaloneError(f"SecretProviderClass file {path}: {e.strerror}") from None
    try:
        docs = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as e:
        raise StandaloneError(f"SecretProviderClass file {path}: not valid YAML: {e}") from None
    if not docs:
        raise StandaloneError(f"SecretProviderClass file {path}: empty")
    spcs = [d for d in docs if isinstance(d, dict) and d.get("kind") == "SecretProviderClass"]
    if not spcs:
        kinds = ", ".join(
            repr(d.get("kind")) if isinstance(d, dict) else type(d).__name__ for d in docs
        )
        raise StandaloneError(
            f"SecretProviderClass file {path}: no object of kind SecretProviderClass "
            f"(found {kinds})"
        )
    if len(spcs) > 1:
        raise StandaloneError(
            f"SecretProviderClass file {path}: {len(spcs)} SecretProviderClasses; give one per file"
        )
    doc = spcs[0]
    if doc.get("apiVersion") not in API_VERSIONS:
        raise StandaloneError(
            f"SecretProviderClass file {path}: apiVersion {doc.get('apiVersion')!r}, "
            f"want {API_VERSIONS[0]}"
        )
    meta = doc.get("metadata") or {}
    name = str(meta.get("name") or "") if isinstance(meta, dict) else ""
    if not name:
        raise StandaloneError(f"SecretProviderClass file {path}: metadata.name is not set")
    namespace = str(meta.get("namespace") or "default")
    spec = doc.get("spec") or {}
    if not isinstance(spec, dict):
        raise StandaloneError(f"SecretProviderClass file {path}: spec is not a mapping")
    provider = spec.get("provider")
    if not provider:
        raise StandaloneError(f"provider not set in {namespace}/{name} ({path})")
    params = spec.get("parameters") or {}
    if not isinstance(params, dict):
        raise StandaloneError(f"SecretProviderClass file {path}: spec.parameters is not a mapping")
    if not params:
        raise StandaloneError(f"parameters not set in {namespace}/{name} ({path})")
    for key, value in params.items():
        if not isinstance(value, str):
            raise StandaloneError(
                f"SecretProviderClass file {path}: spec.parameters.{key} must be a string "
                f"(quote it), got {type(value).__name__}"
            )
    return SecretProviderClassSpec(
        namespace=namespace,
        name=name,
        provider=str(provider),
        parameters={str(k): v for k, v in params.items()},
    )


def load_secrets(path: str, env: Mapping[str, str] | None = None) -> dict[str, str]:
    """nodePublishSecretRef data: a YAML/JSON map of strings, or a Kubernetes Secret manifest
    (`data` base64, `stringData` plain); else JSON in $SECRETS_STORE_NODE_PUBLISH_SECRET."""
    env = os.environ if env is None else env
    if not path:
        text = env.get(SECRET_ENV, "")
        if not text:
            return {}
        where = f"${SECRET_ENV}"
    else:
        where = f"secrets file {path}"
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except OSError as e:
            raise StandaloneError(f"{where}: {e.strerror}") from None
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError:
        raise StandaloneError(f"{where}: not valid YAML or JSON") from None  # no secret in it
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        raise StandaloneError(f"{where}: want a map of names to strings")
    if doc.get("kind") == "Secret":
        out: dict[str, str] = {}
        for k, v in (doc.get("data") or {}).items():
            try:
                out[str(k)] = base64.b64decode(str(v), validate=True).decode("utf-8", "replace")
            except ValueError:
                raise StandaloneError(f"{where}: data.{k} is not base64") from None
        out.update({str(k): str(v) for k, v in (doc.get("stringData") or {}).items()})
        return out
    for k, v in doc.items():
        if not isinstance(v, str):
            raise StandaloneError(f"{where}: value of {k!r} must be a string")
    return {str(k): v for k, v in doc.items()}


class FileSpcSource:
    """SpcSource over a manifest file, re-read on every get (rotation picks up edits)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.spec = load_spc(path)

    async def get(self, namespace: str, name: str) -> SecretProviderClassSpec:
        try:
            spec = await asyncio.to_thread(load_spc, self.path)
        except StandaloneError as e:
            raise KubeError(str(e)) from None
        if (spec.namespace, spec.name) != (namespace, name):
            raise KubeError(
                f"{self.path} now holds {spec.namespace}/{spec.name}, not {namespace}/{name}"
            )
        self.spec = spec
        return spec


def check_target(target: str) -> None:
    if os.path.islink(target):
        raise StandaloneError(f"target path {target} is a symlink; give the directory itself")
    if not os.path.exists(target):
        raise StandaloneError(f"target path {target} does not exist; create the directory first")
    if not os.path.isdir(target):
        raise StandaloneError(f"target path {target} is not a directory")
    from . import mounter

    if mounter.is_mount_point(target):
        raise StandaloneError(f"target path {target} is already a mount point; unmount it first")
    if os.listdir(target):
        raise StandaloneError(
            f"target path {target} is not empty; standalone mode owns the directory's "
            "contents and removes them on exit"
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
            rotation_enabled=config.enable_secret_rotation,
            use_tmpfs=self.use_tmpfs,
            record_status=False,
        )
        spc = self.spcs.spec
        self.volume_id = f"standalone-{spc.namespace}-{spc.name}"
        self.volume_context = {
            SPC_FIELD: spc.name,
            POD_NAME: config.pod_name or socket.gethostname(),
            POD_NAMESPACE: config.pod_namespace or spc.namespace,
            POD_UID: str(uuid.uuid5(uuid.NAMESPACE_URL, f"file://{self.target}")),
            POD_SA_NAME: config.service_account,
            "csi.storage.k8s.io/ephemeral": "true",
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

    async def _plan(self, record: PodStatusRecord) -> Plan:
        """The rotation plan of the one volume: SPC and secrets re-read from their files."""
        try:
            spc = await self.spcs.get(record.namespace, record.spc_name)
        except KubeError as e:
            raise RotationError(str(e), SPC_NOT_FOUND) from None
        try:
            self.secrets = await asyncio.to_thread(load_secrets, self.config.secrets_file)
        except StandaloneError as e:
            raise RotationError(str(e), SECRET_REF_NOT_FOUND) from None
        return Plan(
            record=record,
            provider=spc.provider,
            spc_parameters=spc.parameters,
            volume_context=dict(self.volume_context),
            secrets=dict(self.secrets),
            service_account=self.config.service_account,
            secret_ref=self.config.secrets_file,
        )

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
            self.node, None, interval=self.config.rotation_poll_interval, share=False
        )
        self.rotation.plan_source = self._plan
        self.rotation.record_status = False
        self.rotation.start()
        log.info(
            "standalone: rotation every %.1fs (--rotation-poll-interval)",
            self.config.rotation_poll_interval,
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


def _flagset() -> FlagSet:
    fs = FlagSet("secrets-store-csi-driver standalone")
    fs.add("spc", "", "SecretProviderClass manifest file (YAML, as applied to a cluster)")
    fs.add("target-path", "", "directory to mount into (must exist and be empty)")
    fs.add(
        "node-publish-secret-file",
        "",
        "nodePublishSecretRef data: YAML/JSON map or a Secret manifest "
        f"(else JSON in ${SECRET_ENV})",
    )
    fs.add("provider-volume", "/var/run/secrets-store-csi-providers", "Volume path for provider")
    fs.add(
        "additional-provider-volume-paths",
        "/etc/kubernetes/secrets-store-csi-providers",
        "Comma separated list of additional paths to communicate with providers",
    )
    fs.add("enable-secret-rotation", True, "Enable secret rotation feature", "bool")
    fs.add("rotation-poll-interval", 120.0, "Secret rotation poll interval duration", "duration")
    fs.add("metrics-addr", "", "The address the metric endpoint binds to (off when empty)")
    fs.add("max-call-recv-msg-size", 4 * 1024 * 1024, "maximum size of a provider response", "int")
    fs.add("provider-timeout", 60.0, "deadline of one provider Mount call", "duration")
    fs.add("tmpfs-size", "", "size cap of the tmpfs (bytes, or Ki/Mi/Gi); default 16Mi")
    fs.add("pod-name", "", "pod name sent to the provider (default: the host name)")
    fs.add("pod-namespace", "", "pod namespace sent to the provider (default: the SPC's)")
    fs.add("service-account", "default", "service account name sent to the provider")
    fs.add("log-format-json", False, "set log formatter to json", "bool")
    fs.add("v", 0, "number for the log level verbosity", "int")
    fs.add("version", False, "Print the version and exit", "bool")
    return fs


def parse_args(argv: Sequence[str]) -> StandaloneConfig | None:
    """None for --version; raises FlagError on bad flags."""
    from .config import parse_size

    values, rest = _flagset().parse(argv)
    if rest:
        raise FlagError(f"unexpected arguments: {' '.join(rest)}")
    if values["version"]:
        return None
    for required in ("spc", "target-path"):
        if not values[required]:
            raise FlagError(f"-{required} is required")
    if values["rotation-poll-interval"] <= 0:
        raise FlagError("-rotation-poll-interval must be positive")
    extra = values["additional-provider-volume-paths"]
    return StandaloneConfig(
        spc_file=values["spc"],
        target_path=values["target-path"],
        secrets_file=values["node-publish-secret-file"],
        provider_paths=(values["provider-volume"], *(p for p in extra.split(",") if p)),
        enable_secret_rotation=values["enable-secret-rotation"],
        rotation_poll_interval=values["rotation-poll-interval"],
        metrics_addr=values["metrics-addr"],
        max_call_recv_msg_size=values["max-call-recv-msg-size"],
        provider_timeout=values["provider-timeout"],
        tmpfs_size=parse_size(values["tmpfs-size"]) if values["tmpfs-size"] else 16 << 20,
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
