"""Injected faults, the request log and per-route counters: how tests and benchmarks make the
emulator misbehave and count what clients did."""

from __future__ import annotations

import itertools
import re
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

SERVICES = ("kv", "entra", "imds", "token-proxy")


@dataclass
class FaultRule:
    id: int
    service: str | None = None
    method: str | None = None
    path: re.Pattern[str] | None = None
    identity: str | None = None
    vault: str | None = None
    count: int | None = None  # None: every match
    status: int | None = None
    retry_after: int | None = None
    delay_ms: int = 0
    drop: bool = False
    body: Any = None
    hits: int = 0

    def matches(self, service: str, method: str, path: str, vault: str, identity: str) -> bool:
        if self.count is not None and self.hits >= self.count:
            return False
        if self.service and self.service != service:
            return False
        if self.method and self.method.upper() != method.upper():
            return False
        if self.vault and self.vault.lower() != vault.lower():
            return False
        if self.identity and self.identity.lower() != identity.lower():
            return False
        return not (self.path and not self.path.search(path))

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "service": self.service,
            "method": self.method,
            "path": self.path.pattern if self.path else None,
            "identity": self.identity,
            "vault": self.vault,
            "count": self.count,
            "status": self.status,
            "retry_after": self.retry_after,
            "delay_ms": self.delay_ms,
            "drop": self.drop,
            "hits": self.hits,
        }


def parse_rule(raw: dict[str, Any], rule_id: int) -> FaultRule:
    """Validates an admin request's rule; raises ValueError naming the bad field."""
    known = {
        "service",
        "method",
        "path",
        "identity",
        "vault",
        "count",
        "status",
        "retry_after",
        "retryAfter",
        "delay_ms",
        "delayMs",
        "drop",
        "body",
    }
    unknown = set(raw) - known
    if unknown:
        raise ValueError(f"unknown fault fields: {', '.join(sorted(unknown))}")
    service = raw.get("service")
    if service is not None and service not in SERVICES:
        raise ValueError(f"service must be one of {', '.join(SERVICES)}")
    status = raw.get("status")
    if status is not None and (not isinstance(status, int) or not 100 <= status <= 599):
        raise ValueError("status must be an HTTP status code")
    count = raw.get("count")
    if count is not None and (not isinstance(count, int) or count < 1):
        raise ValueError("count must be a positive integer")
    delay = raw.get("delay_ms", raw.get("delayMs", 0)) or 0
    if not isinstance(delay, int) or delay < 0:
        raise ValueError("delay_ms must be a non-negative integer")
    retry_after = raw.get("retry_after", raw.get("retryAfter"))
    if retry_after is not None and not isinstance(retry_after, int):
        raise ValueError("retry_after must be an integer (seconds)")
    drop = bool(raw.get("drop", False))
    if status is None and not drop and not delay:
        raise ValueError("a rule needs a status, delay_ms or drop")
    try:
        path = re.compile(raw["path"]) if raw.get("path") else None
    except re.error as exc:
        raise ValueError(f"path is not a regular expression: {exc}") from None
    return FaultRule(
        id=rule_id,
        service=service,
        method=raw.get("method"),
        path=path,
        identity=raw.get("identity"),
        vault=raw.get("vault"),
        count=count,
        status=status,
        retry_after=retry_after,
        delay_ms=delay,
        drop=drop,
        body=raw.get("body"),
    )


@dataclass
class Faults:
    rules: list[FaultRule] = field(default_factory=list)
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def add(self, raw: dict[str, Any]) -> FaultRule:
        rule = parse_rule(raw, next(self._ids))
        self.rules.append(rule)
        return rule

    def clear(self) -> None:
        self.rules.clear()

    def take(
        self, service: str, method: str, path: str, vault: str, identity: str
    ) -> FaultRule | None:
        """The first live rule that matches; counts the hit."""
        for rule in self.rules:
            if rule.matches(service, method, path, vault, identity):
                rule.hits += 1
                return rule
        return None


@dataclass
class RequestLog:
    entries: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=50_000))
    by_route: Counter[str] = field(default_factory=Counter)
    by_service: Counter[str] = field(default_factory=Counter)
    by_vault: Counter[str] = field(default_factory=Counter)
    by_status: Counter[str] = field(default_factory=Counter)
    by_identity: Counter[str] = field(default_factory=Counter)

    def record(
        self,
        service: str,
        method: str,
        path: str,
        route: str,
        vault: str,
        identity: str,
        status: int,
        fault: int | None,
    ) -> None:
        self.entries.append(
            {
                "time": time.time(),
                "service": service,
                "method": method,
                "path": path,
                "route": route,
                "vault": vault,
                "identity": identity,
                "status": status,
                "fault": fault,
            }
        )
        self.by_route[f"{service} {method} {route}"] += 1
        self.by_service[service] += 1
        if vault:
            self.by_vault[vault] += 1
        self.by_status[str(status)] += 1
        if identity:
            self.by_identity[identity] += 1

    def clear(self) -> None:
        self.entries.clear()
        for c in (self.by_route, self.by_service, self.by_vault, self.by_status, self.by_identity):
            c.clear()

    def counters(self) -> dict[str, Any]:
        return {
            "total": sum(self.by_service.values()),
            "by_service": dict(self.by_service),
            "by_route": dict(self.by_route),
            "by_vault": dict(self.by_vault),
            "by_status": dict(self.by_status),
            "by_identity": dict(self.by_identity),
        }
