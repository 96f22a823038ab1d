"""The driver's settings, parsed once from upstream's flags into a frozen dataclass."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from . import DRIVER_NAME
from .goflags import FlagError, FlagSet

# klog and controller-runtime flags upstream's binary also accepts; parsed and ignored.
_IGNORED_STRING_FLAGS = (
    "log_dir",
    "log_file",
    "vmodule",
    "stderrthreshold",
    "log_backtrace_at",
    "log_file_max_size",
    "pprof-port",
)
_IGNORED_BOOL_FLAGS = (
    "logtostderr",
    "alsologtostderr",
    "add_dir_header",
    "skip_headers",
    "skip_log_headers",
    "one_output",
    "enable-pprof",
)


@dataclass(frozen=True)
class Config:
    endpoint: str
    driver_name: str
    node_id: str
    provider_volume: str
    additional_provider_volume_paths: tuple[str, ...]
    metrics_addr: str
    enable_secret_rotation: bool
    rotation_poll_interval: float
    max_call_recv_msg_size: int
    provider_health_check: bool
    provider_health_check_interval: float
    log_format_json: bool
    verbosity: int
    kubeconfig: str
    tmpfs_size: int
    provider_timeout: float
    version: bool
    rotation_share_provider_calls: bool = True

    @property
    def provider_paths(self) -> tuple[str, ...]:
        """Where provider sockets are looked for, in upstream's order."""
        return (self.provider_volume, *self.additional_provider_volume_paths)


def _flagset() -> FlagSet:
    fs = FlagSet("secrets-store-csi-driver")
    fs.add("endpoint", "unix://tmp/csi.sock", "CSI endpoint")
    fs.add("drivername", DRIVER_NAME, "name of the driver")
    fs.add("nodeid", "", "node id")
    fs.add("log-format-json", False, "set log formatter to json", "bool")
    fs.add("provider-volume", "/var/run/secrets-store-csi-providers", "Volume path for provider")
    fs.add(
        "additional-provider-volume-paths",
        "/etc/kubernetes/secrets-store-csi-providers",
        "Comma separated list of additional paths to communicate with providers",
    )
    fs.add("metrics-addr", ":8095", "The address the metric endpoint binds to")
    fs.add("enable-secret-rotation", False, "Enable secret rotation feature [alpha]", "bool")
    fs.add("rotation-poll-interval", 120.0, "Secret rotation poll interval duration", "duration")
    fs.add(
        "max-call-recv-msg-size",
        4 * 1024 * 1024,
        "maximum size in bytes of gRPC response from plugins",
        "int",
    )
    fs.add("version", False, "Print the version and exit", "bool")
    fs.add("provider-health-check", False, "Enable health check for configured providers", "bool")
    fs.add("provider-health-check-interval", 120.0, "Provider healthcheck interval", "duration")
    fs.add("kubeconfig", "", "Paths to a kubeconfig. Only required if out-of-cluster.")
    fs.add("v", 0, "number for the log level verbosity", "int")
    fs.add(
        "tmpfs-size",
        "",
        "size cap of each volume's tmpfs (bytes, or with Ki/Mi/Gi suffix); default: the larger "
        "of 16Mi and twice --max-call-recv-msg-size plus 1Mi (old and new payload during a "
        "swap) [this driver only]",
    )
    fs.add(
        "provider-timeout",
        60.0,
        "deadline of one provider Mount call, retries included [this driver only]",
        "duration",
    )
    fs.add(
        "rotation-share-provider-calls",
        True,
        "one provider call per tick for mounts sharing SPC, namespace, service account and "
        "nodePublishSecretRef [this driver only]",
        "bool",
    )
    for name in _IGNORED_STRING_FLAGS:
        fs.add(name, "", "accepted for compatibility; ignored")
    for name in _IGNORED_BOOL_FLAGS:
        fs.add(name, False, "accepted for compatibility; ignored", "bool")
    return fs


_SIZE = re.compile(r"^(\d+)(Ki|Mi|Gi|k|m|g|K|M|G)?$")
_FACTORS = {None: 1, "k": 1024, "K": 1024, "Ki": 1024, "m": 1 << 20, "M": 1 << 20, "Mi": 1 << 20}
_FACTORS.update({"g": 1 << 30, "G": 1 << 30, "Gi": 1 << 30})


def parse_size(text: str) -> int:
    m = _SIZE.match(text.strip())
    if m is None or int(m.group(1)) <= 0:
        raise FlagError(f"invalid size {text!r}")
    return int(m.group(1)) * _FACTORS[m.group(2)]


def parse_args(argv: Sequence[str]) -> Config:
    """Parse argv (without the program name) as upstream's binary does; raises FlagError."""
    values, rest = _flagset().parse(argv)
    if rest:
        raise FlagError(f"unexpected arguments: {' '.join(rest)}")
    extra = values["additional-provider-volume-paths"]
    return Config(
        endpoint=values["endpoint"],
        driver_name=values["drivername"],
        node_id=values["nodeid"],
        provider_volume=values["provider-volume"],
        additional_provider_volume_paths=tuple(p for p in extra.split(",") if p),
        metrics_addr=values["metrics-addr"],
        enable_secret_rotation=values["enable-secret-rotation"],
        rotation_poll_interval=values["rotation-poll-interval"],
        max_call_recv_msg_size=values["max-call-recv-msg-size"],
        provider_health_check=values["provider-health-check"],
        provider_health_check_interval=values["provider-health-check-interval"],
        log_format_json=values["log-format-json"],
        verbosity=values["v"],
        kubeconfig=values["kubeconfig"],
        tmpfs_size=(
            parse_size(values["tmpfs-size"])
            if values["tmpfs-size"]
            else max(16 << 20, 2 * values["max-call-recv-msg-size"] + (1 << 20))
        ),
        provider_timeout=values["provider-timeout"],
        version=values["version"],
        rotation_share_provider_calls=values["rotation-share-provider-calls"],
    )
