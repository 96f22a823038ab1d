"""The controller's Prometheus series (its own names: the Sync Controller exports only
controller-runtime's generic ones)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.registry import REGISTRY


class Metrics:
    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        self.reconcile = Counter(
            "secretsync_reconcile",
            "SecretSync reconciles, by outcome and condition reason",
            ["result", "reason"],
            registry=registry,
        )
        self.duration = Histogram(
            "secretsync_reconcile_duration_seconds",
            "Time to reconcile one SecretSync",
            buckets=[0.01 * 2**i for i in range(14)],
            registry=registry,
        )
        self.restarts = Counter(
            "secretsync_restart_on_change",
            "Rollouts by restart-on-change (result restarted) and requests held back by its "
            "rate limits (result suppressed), by workload kind",
            ["kind", "result"],
            registry=registry,
        )

    def observe(self, reason: str, ok: bool, seconds: float) -> None:
        self.reconcile.labels("success" if ok else "error", reason).inc()
        self.duration.observe(seconds)
