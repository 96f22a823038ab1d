"""The controller's flags: the Sync Controller's (same names and defaults, Go flag syntax),
plus a few of ours marked `[this controller only]`."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

from secrets_store_api.goflags import Flag, FlagError, FlagSet

__all__ = ["Config", "FlagError", "parse_args"]

FLAGS: tuple[Flag, ...] = (
    Flag("provider-volume", "/provider", "Volume path for provider."),
    Flag("token-request-audience", "", "Audience for the token request, comma separated."),
    Flag(
        "rotation-poll-interval",
        12 * 3600.0,
        "Polling interval to resync secrets from the provider. To disable provider polling, "
        "set it to 0s.",
        "duration",
    ),
    Flag("leader-elect", False, "Enable leader election for controller manager.", "bool"),
    Flag("leader-election-namespace", "", "Namespace for leader election"),
    Flag("metrics-bind-address", ":8085", "The address the metric endpoint binds to."),
    Flag("health-probe-bind-address", ":8081", "The address the probe endpoint binds to."),
    Flag(
        "max-call-recv-msg-size",
        4 * 1024 * 1024,
        "maximum size in bytes of gRPC response from plugins",
        "int",
    ),
    Flag("kubeconfig", "", "Paths to a kubeconfig. Only required if out-of-cluster."),
    Flag("version", False, "Print the version and exit", "bool"),
    Flag("v", 0, "number for the log level verbosity", "int"),
    Flag("zap-log-level", "", "accepted for compatibility; -v sets the level"),
    Flag("zap-devel", False, "accepted for compatibility", "bool"),
    Flag("leader-election-lease-duration", 15.0, "[this controller only]", "duration"),
    Flag("leader-election-renew-deadline", 10.0, "[this controller only]", "duration"),
    Flag("leader-election-retry-period", 2.0, "[this controller only]", "duration"),
    Flag(
        "provider-timeout",
        60.0,
        "deadline of one provider Mount [this controller only]",
        "duration",
    ),
    Flag("workers", 8, "SecretSyncs synced at once [this controller only]", "int"),
    Flag("log-format-json", False, "JSON logs [this controller only]", "bool"),
    Flag(
        "enable-restart-on-change",
        False,
        "roll annotated Deployments/StatefulSets/DaemonSets when their pods' mounted versions "
        "or managed Secrets change (docs/rotation.md) [this controller only]",
        "bool",
    ),
    Flag(
        "restart-min-interval",
        60.0,
        "restart-on-change: at least this long between two rollouts of one workload "
        "[this controller only]",
        "duration",
    ),
    Flag(
        "restart-max-in-flight",
        5,
        "restart-on-change: at most this many rollouts unfinished at once [this controller only]",
        "int",
    ),
)
SA_NAMESPACE_FILE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"


@dataclass(frozen=True)
class Config:
    provider_volume: str
    audiences: tuple[str, ...]
    poll: float
    leader_elect: bool
    leader_namespace: str
    metrics_addr: str
    probe_addr: str
    max_recv: int
    kubeconfig: str
    version: bool
    verbosity: int
    lease_duration: float
    renew_deadline: float
    retry_period: float
    provider_timeout: float
    workers: int
    log_json: bool
    restart_on_change: bool
    restart_min_interval: float
    restart_max_in_flight: int
    pod_name: str
    pod_uid: str


def _namespace(flag: str) -> str:
    if flag:
        return flag
    if os.environ.get("SYNC_CONTROLLER_POD_NAMESPACE"):
        return os.environ["SYNC_CONTROLLER_POD_NAMESPACE"]
    try:
        with open(SA_NAMESPACE_FILE) as f:
            return f.read().strip()
    except OSError:
        return "default"


def parse_args(argv: Sequence[str]) -> Config:
    values, rest = FlagSet("secrets-store-sync-controller", FLAGS).parse(argv)
    if rest:
        raise FlagError(f"unexpected arguments: {' '.join(rest)}")
    audiences = tuple(
        a.strip() for a in str(values["token-request-audience"]).split(",") if a.strip()
    )
    return Config(
        provider_volume=values["provider-volume"],
        audiences=audiences,
        poll=values["rotation-poll-interval"],
        leader_elect=values["leader-elect"],
        leader_namespace=_namespace(values["leader-election-namespace"]),
        metrics_addr=values["metrics-bind-address"],
        probe_addr=values["health-probe-bind-address"],
        max_recv=values["max-call-recv-msg-size"],
        kubeconfig=values["kubeconfig"],
        version=values["version"],
        verbosity=values["v"],
        lease_duration=values["leader-election-lease-duration"],
        renew_deadline=values["leader-election-renew-deadline"],
        retry_period=values["leader-election-retry-period"],
        provider_timeout=values["provider-timeout"],
        workers=max(1, values["workers"]),
        log_json=values["log-format-json"],
        restart_on_change=values["enable-restart-on-change"],
        restart_min_interval=max(0.0, values["restart-min-interval"]),
        restart_max_in_flight=max(1, values["restart-max-in-flight"]),
        pod_name=os.environ.get("SYNC_CONTROLLER_POD_NAME", ""),
        pod_uid=os.environ.get("SYNC_CONTROLLER_POD_UID", ""),
    )
