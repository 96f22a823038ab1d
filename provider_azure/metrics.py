"""Prometheus metrics with upstream's names and labels (its OpenTelemetry exporter's output).

`keyvault_request` (per Key Vault operation) and `grpc_request` (per RPC), histograms in
seconds with upstream's buckets and attributes.
"""

from __future__ import annotations

import sys

from prometheus_client import CollectorRegistry, Histogram, generate_latest

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

    def _common(self) -> tuple[str, ...]:
        return (SCOPE, "", "", SERVICE_NAME, "azure", OS_TYPE)

    def observe_keyvault(
        self, object_type: str, object_name: str, error: str, seconds: float
    ) -> None:
        self.keyvault_request.labels(*self._common(), object_type, object_name, error).observe(
            seconds
        )

    def observe_grpc(self, method: str, code: str, message: str, seconds: float) -> None:
        self.grpc_request.labels(*self._common(), method, code, message).observe(seconds)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
