"""Prometheus metrics with upstream's names and labels (its OpenTelemetry exporter's output).

`keyvault_request` (per Key Vault operation) and `grpc_request` (per RPC), histograms in
seconds with upstream's buckets and attributes. Unlike upstream, label values are bounded:
`error` and `grpc_message` carry the error's kind and reason (never the message, which may quote
input), and each histogram keeps at most MAX_SERIES label sets (least recently observed dropped),
since `object_name` is a pod author's choice. Every cache's size and evictions are exported too.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from .caches import BoundedLRU

MAX_SERIES = 1000

BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 1, 1.5, 2, 2.5, 3.0, 5.0, 10.0, 15.0, 30.0)
SERVICE_NAME = "csi-secrets-store-provider-azure"
SCOPE = "csi-secrets-store-provider-azure"
OS_TYPE = "windows" if sys.platform.startswith("win") else sys.platform.rstrip("0123456789")
_COMMON = (
    "otel_scope_name",
    "otel_scope_schema_url",
    "otel_scope_version",
    "service_name",
    "provider",
    "os_type",
)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._caches: dict[str, BoundedLRU[Any, Any]] = {}
        self._evictions_seen: dict[str, int] = {}
        self.cache_evictions = Counter(
            "provider_cache_evictions",
            "Entries dropped to keep a bounded cache within its limit",
            ("cache",),
            registry=self.registry,
        )
        self.cache_entries = Gauge(
            "provider_cache_entries",
            "Entries held by a bounded cache",
            ("cache",),
            registry=self.registry,
        )
        self.cache_bytes = Gauge(
            "provider_cache_bytes",
            "Bytes counted by a bounded cache",
            ("cache",),
            registry=self.registry,
        )
        self.keyvault_request = Histogram(
            "keyvault_request",
            "Distribution of how long it took to get from keyvault",
            (*_COMMON, "object_type", "object_name", "error"),
            registry=self.registry,
            buckets=BUCKETS,
        )
        self.grpc_request = Histogram(
            "grpc_request",
            "Distribution of how long it took for the gRPC requests",
            (*_COMMON, "grpc_method", "grpc_code", "grpc_message"),
            registry=self.registry,
            buckets=BUCKETS,
        )
        self._series: dict[str, BoundedLRU[tuple[str, ...], Any]] = {
            name: BoundedLRU(f"{name} series", MAX_SERIES)
            for name in ("keyvault_request", "grpc_request")
        }
        for series in self._series.values():
            self.watch(series)

    def watch(self, cache: BoundedLRU[Any, Any]) -> None:
        """Export `cache`'s size and evictions (`provider_cache_*{cache=<its name>}`)."""
        self._caches.setdefault(cache.name, cache)
        self._evictions_seen.setdefault(cache.name, 0)

    def _observe(
        self, name: str, histogram: Histogram, labels: Sequence[str], value: float
    ) -> None:
        series = self._series[name]
        key = tuple(labels)
        child = series.get(key)
        if child is None:
            # the labelled child is kept with its series: `labels()` is a lock, a tuple and a
            # dict look-up on every Key Vault GET otherwise
            child = histogram.labels(*key)
            for evicted, _ in series.put(key, child):
                histogram.remove(*evicted)
        child.observe(value)

    def _common(self) -> tuple[str, ...]:
        return (SCOPE, "", "", SERVICE_NAME, "azure", OS_TYPE)

    def observe_keyvault(
        self, object_type: str, object_name: str, error: str, seconds: float
    ) -> None:
        """`error`: a bounded label (ProviderError.label), empty on success."""
        labels = (*self._common(), object_type, object_name, error)
        self._observe("keyvault_request", self.keyvault_request, labels, seconds)

    def observe_grpc(self, method: str, code: str, message: str, seconds: float) -> None:
        """`message`: a bounded label (ProviderError.label), empty on success."""
        labels = (*self._common(), method, code, message)
        self._observe("grpc_request", self.grpc_request, labels, seconds)

    def _refresh_caches(self) -> None:
        for name, cache in self._caches.items():
            self.cache_entries.labels(name).set(len(cache))
            self.cache_bytes.labels(name).set(cache.bytes)
            new = cache.evictions - self._evictions_seen[name]
            self.cache_evictions.labels(name).inc(new)
            self._evictions_seen[name] = cache.evictions

    def exposition(self) -> bytes:
        self._refresh_caches()
        return generate_latest(self.registry)
