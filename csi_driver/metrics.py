"""Upstream's metric names and labels (OpenTelemetry counters exported to Prometheus).

Upstream's exporter adds `_total` to counters and labels every series with `os_type`;
these prometheus-client counters give the same exposition.
"""

from __future__ import annotations

import sys
from urllib.parse import urlsplit

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.registry import REGISTRY

OS_TYPE = "windows" if sys.platform == "win32" else "linux"


class Metrics:
    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        self.registry = registry
        self.node_publish = Counter(
            "node_publish",
            "Total number of node publish calls",
            ["provider", "os_type"],
            registry=registry,
        )
        self.node_unpublish = Counter(
            "node_unpublish", "Total number of node unpublish calls", ["os_type"], registry=registry
        )
        self.node_publish_error = Counter(
            "node_publish_error",
            "Total number of node publish calls with error",
            ["provider", "error_type", "os_type"],
            registry=registry,
        )
        self.node_unpublish_error = Counter(
            "node_unpublish_error",
            "Total number of node unpublish calls with error",
            ["os_type"],
            registry=registry,
        )
        self.rotation_reconcile = Counter(
            "rotation_reconcile",
            "Total number of rotation reconciles",
            ["provider", "os_type", "rotated"],
            registry=registry,
        )
        self.rotation_reconcile_error = Counter(
            "rotation_reconcile_error",
            "Total number of rotation reconciles with error",
            ["provider", "error_type", "os_type", "rotated"],
            registry=registry,
        )
        self.rotation_reconcile_duration = Histogram(
            "rotation_reconcile_duration_sec",
            "Distribution of how long it took to rotate secrets-store content for pods",
            ["os_type"],
            buckets=[0.1 * 2**i for i in range(13)],  # 0.1 s .. ~6.8 min
            registry=registry,
        )

        # this driver's own: how long a publish waited for its provider (provider_wait.py)
        self.provider_wait_duration = Histogram(
            "provider_wait_duration_sec",
            "Distribution of how long node publish calls waited for a provider to answer",
            ["provider", "os_type"],
            buckets=[0.1 * 2**i for i in range(11)],  # 0.1 s .. ~1.7 min
            registry=registry,
        )

        # this driver's own: publishes served by another publish's provider call (node.py)
        self.publish_calls_saved = Counter(
            "node_publish_provider_calls_saved",
            "Provider Mount calls saved by sharing one call in flight among concurrent publishes "
            "with the same SecretProviderClass, namespace, service account and "
            "nodePublishSecretRef data",
            ["provider", "os_type"],
            registry=registry,
        )

        # upstream declares these and never records them; recorded here on every Secret write
        self.sync_k8s_secret = Counter(
            "sync_k8s_secret",
            "Total number of k8s secrets synced",
            ["provider", "os_type"],
            registry=registry,
        )
        self.k8s_secret_duration = Histogram(
            "k8s_secret_duration_sec",
            "Distribution of how long it took to sync k8s secret",
            ["os_type"],
            buckets=[0.1 * 2**i for i in range(11)],
            registry=registry,
        )

    def secret_synced(self, provider: str, seconds: float) -> None:
        self.sync_k8s_secret.labels(provider, OS_TYPE).inc()
        self.k8s_secret_duration.labels(OS_TYPE).observe(seconds)

    def publish_ok(self, provider: str) -> None:
        self.node_publish.labels(provider, OS_TYPE).inc()

    def publish_error(self, provider: str, error_type: str) -> None:
        self.node_publish_error.labels(provider, error_type, OS_TYPE).inc()

    def unpublish_ok(self) -> None:
        self.node_unpublish.labels(OS_TYPE).inc()

    def unpublish_error(self) -> None:
        self.node_unpublish_error.labels(OS_TYPE).inc()


def parse_addr(addr: str) -> tuple[str, int]:
    """Go listen address (`:8095`, `127.0.0.1:8095`, `[::1]:8095`) → (host, port)."""
    parts = urlsplit(f"//{addr}")
    if parts.port is None:
        raise ValueError(f"invalid metrics address {addr!r}")
    return parts.hostname or "", parts.port


def serve(addr: str, registry: CollectorRegistry = REGISTRY) -> object:
    """Start the /metrics HTTP server in a thread; returns the server (has .shutdown())."""
    host, port = parse_addr(addr)
    server, _thread = start_http_server(port, addr=host or "0.0.0.0", registry=registry)
    return server
