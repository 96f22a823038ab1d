"""A small method + regex router: each route names its template (for counters) and, for Key
Vault, the RBAC data action it needs and the object kind that scopes it."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from aiohttp import web

Ctx = TypeVar("Ctx")


@dataclass(frozen=True)
class Route(Generic[Ctx]):
    method: str
    template: str  # "/secrets/{name}/{version}"
    handler: Callable[[Ctx], Awaitable[web.StreamResponse]]
    action: str = ""  # RBAC data action, Key Vault only
    kind: str = ""  # "secrets" | "keys" | "certificates": the scope is /<kind>/<name>
    regex: re.Pattern[str] = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        parts = []
        for seg in self.template.strip("/").split("/"):
            if not seg:
                continue
            if seg.startswith("{") and seg.endswith("?}"):
                parts.append(f"(?:/(?P<{seg[1:-2]}>[^/]*))?")
            elif seg.startswith("{") and seg.endswith("}"):
                parts.append(f"/(?P<{seg[1:-1]}>[^/]+)")
            else:
                parts.append("/" + re.escape(seg))
        object.__setattr__(self, "regex", re.compile("^" + "".join(parts) + "/?$", re.IGNORECASE))


class Router(Generic[Ctx]):
    def __init__(self) -> None:
        self.routes: list[Route[Ctx]] = []

    def add(
        self,
        method: str,
        template: str,
        handler: Callable[[Ctx], Awaitable[web.StreamResponse]],
        action: str = "",
        kind: str = "",
    ) -> None:
        self.routes.append(Route(method, template, handler, action, kind))

    def resolve(self, method: str, path: str) -> tuple[Route[Ctx] | None, dict[str, str], bool]:
        """(route, params, path_matched_other_method)."""
        other = False
        for route in self.routes:
            m = route.regex.match(path)
            if m is None:
                continue
            if route.method != method:
                other = True
                continue
            return route, {k: v for k, v in m.groupdict().items() if v is not None}, False
        return None, {}, other
