"""The driver's settings, parsed once from upstream's flags into a frozen dataclass.

The flags both modes take (the daemon here, standalone mode in standalone.py) are one table,
SHARED_FLAGS; parsing is Go's flag syntax (secrets_store_api.goflags).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from secrets_store_api.goflags import Flag, FlagError, FlagSet

from . import DRIVER_NAME

__all__ = [
    "SHARED_FLAGS",
    "Config",
    "Flag",
    "FlagError",
    "flagset",
    "parse_args",
    "parse_size",
    "tmpfs_size",
]

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
DEFAULT_MAX_RECV = 4 * 1024 * 1024
MIN_TMPFS = 16 << 20

SHARED_FLAGS: tuple[Flag, ...] = (
    Flag("provider-volume", "/var/run/secrets-store-csi-providers", "Volume path for provider"),
    Flag(
        "additional-provider-volume-paths",
        "/etc/kubernetes/secrets-store-csi-providers",
        "Comma separated list of additional paths to communicate with providers",
    ),
    Flag("metrics-addr", ":8095", "The address the metric endpoint binds to"),
    Flag("enable-secret-rotation", False, "Enable secret rotation feature [alpha]", "bool"),
    Flag("rotation-poll-interval", 120.0, "Secret rotation poll interval duration", "duration"),
    Flag(
        "min-rotation-poll-interval",
        60.0,
        "lowest interval a SecretProviderClass may ask for with its "
        "secrets-store.csi.k8s.io/rotation-poll-interval annotation [this driver only]",
        "duration",
    ),
    Flag(
        "max-call-recv-msg-size",
        DEFAULT_MAX_RECV,
        "maximum size in bytes of gRPC response from plugins",
        "int",
    ),
    Flag(
        "tmpfs-size",
        "",
        "size cap of each volume's tmpfs (bytes, or with Ki/Mi/Gi suffix); default: the larger "
        "of 16Mi and twice --max-call-recv-msg-size plus 1Mi (old and new payload during a "
        "swap) [this driver only]",
    ),
    Flag(
        "provider-timeout",
        60.0,
        "deadline of one provider Mount call, retries included [this driver only]",
        "duration",
    ),
    Flag("log-format-json", False, "set log formatter to json", "bool"),
    Flag("v", 0, "number for the log level verbosity", "int"),
    Flag("version", False, "Print the version and exit", "bool"),
)


def flagset(program: str, extra: Iterable[Flag], defaults: Mapping[str, Any]) -> FlagSet:
    """SHARED_FLAGS (with this mode's `defaults`) and the mode's own flags."""
    shared = (
        replace(f, default=defaults[f.name]) if f.name in defaults else f for f in SHARED_FLAGS
    )
    return FlagSet(program, (*shared, *extra))


def provider_paths(values: Mapping[str, Any]) -> tuple[str, ...]:
    """Where provider sockets are looked for, in upstream's order."""
    extra = values["additional-provider-volume-paths"]
    return (values["provider-volume"], *(p for p in extra.split(",") if p))


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
    publish_share_provider_calls: bool = True
    provider_wait_timeout: float = 60.0
    remove_startup_taint: bool = False
    startup_taint_providers: tuple[str, ...] = ()
    min_rotation_poll_interval: float = 60.0

    @property
    def provider_paths(self) -> tuple[str, ...]:
        """Where provider sockets are looked for, in upstream's order."""
        return (self.provider_volume, *self.additional_provider_volume_paths)


_DAEMON_FLAGS = (
    Flag("endpoint", "unix://tmp/csi.sock", "CSI endpoint"),
    Flag("drivername", DRIVER_NAME, "name of the driver"),
    Flag("nodeid", "", "node id"),
    Flag("provider-health-check", False, "Enable health check for configured providers", "bool"),
    Flag("provider-health-check-interval", 120.0, "Provider healthcheck interval", "duration"),
    Flag("kubeconfig", "", "Paths to a kubeconfig. Only required if out-of-cluster."),
    Flag(
        "rotation-share-provider-calls",
        True,
        "one provider call per interval for mounts sharing SPC, namespace, service account and "
        "nodePublishSecretRef data, whether ticks or republishes ask [this driver only]",
        "bool",
    ),
    Flag(
        "publish-share-provider-calls",
        True,
        "one provider call in flight for concurrent publishes sharing SPC, namespace, service "
        "account and nodePublishSecretRef data [this driver only]",
        "bool",
    ),
    Flag(
        "provider-wait-timeout",
        60.0,
        "how long a publish waits for a provider that is missing or not answering before it "
        "fails (0: not at all); with --provider-timeout it stays inside kubelet's 2m CSI call "
        "timeout [this driver only]",
        "duration",
    ),
    Flag(
        "remove-startup-taint",
        False,
        "remove the secrets-store.csi.k8s.io/agent-not-ready taint from this node once the "
        "driver serves, kubelet has registered it and every --startup-taint-providers "
        "answers; needs nodes get/patch and csinodes get [this driver only]",
        "bool",
    ),
    Flag(
        "startup-taint-providers",
        "",
        "comma separated providers that must answer Version before the startup taint is "
        "removed, e.g. azure [this driver only]",
    ),
    *(Flag(n, "", "accepted for compatibility; ignored") for n in _IGNORED_STRING_FLAGS),
    *(Flag(n, False, "accepted for compatibility; ignored", "bool") for n in _IGNORED_BOOL_FLAGS),
)


_SIZE = re.compile(r"^(\d+)(Ki|Mi|Gi|k|m|g|K|M|G)?$")
_FACTORS = {None: 1, "k": 1024, "K": 1024, "Ki": 1024, "m": 1 << 20, "M": 1 << 20, "Mi": 1 << 20}
_FACTORS.update({"g": 1 << 30, "G": 1 << 30, "Gi": 1 << 30})


def parse_size(text: str) -> int:
    m = _SIZE.match(text.strip())
    if m is None or int(m.group(1)) <= 0:
        raise FlagError(f"invalid size {text!r}")
    return int(m.group(1)) * _FACTORS[m.group(2)]


def tmpfs_size(flag_value: str, max_call_recv_msg_size: int) -> int:
    """A volume's tmpfs cap, the same in both modes: --tmpfs-size, else room for the old and
    the new payload during a swap (twice the largest provider response, plus 1 MiB)."""
    if flag_value:
        return parse_size(flag_value)
    return max(MIN_TMPFS, 2 * max_call_recv_msg_size + (1 << 20))


def positive(values: Mapping[str, Any], name: str) -> float:
    value: float = values[name]
    if value <= 0:
        raise FlagError(f"-{name} must be positive")
    return value


def parse_args(argv: Sequence[str]) -> Config:
    """Parse argv (without the program name) as upstream's binary does; raises FlagError."""
    values, rest = flagset("secrets-store-csi-driver", _DAEMON_FLAGS, {}).parse(argv)
    if rest:
        raise FlagError(f"unexpected arguments: {' '.join(rest)}")
    paths = provider_paths(values)
    return Config(
        endpoint=values["endpoint"],
        driver_name=values["drivername"],
        node_id=values["nodeid"],
        provider_volume=paths[0],
        additional_provider_volume_paths=paths[1:],
        metrics_addr=values["metrics-addr"],
        enable_secret_rotation=values["enable-secret-rotation"],
        rotation_poll_interval=values["rotation-poll-interval"],
        max_call_recv_msg_size=values["max-call-recv-msg-size"],
        provider_health_check=values["provider-health-check"],
        provider_health_check_interval=values["provider-health-check-interval"],
        log_format_json=values["log-format-json"],
        verbosity=values["v"],
        kubeconfig=values["kubeconfig"],
        tmpfs_size=tmpfs_size(values["tmpfs-size"], values["max-call-recv-msg-size"]),
        provider_timeout=values["provider-timeout"],
        version=values["version"],
        rotation_share_provider_calls=values["rotation-share-provider-calls"],
        publish_share_provider_calls=values["publish-share-provider-calls"],
        provider_wait_timeout=values["provider-wait-timeout"],
        remove_startup_taint=values["remove-startup-taint"],
        startup_taint_providers=tuple(
            p.strip() for p in values["startup-taint-providers"].split(",") if p.strip()
        ),
        min_rotation_poll_interval=positive(values, "min-rotation-poll-interval"),
    )
