"""The grants of RBAC manifests, one verb of one rule of one role each: what the
least-privilege tests drop one at a time (tests/kube/test_least_privilege.py for the driver,
tests/sync/test_sync_least_privilege.py for the SecretSync controller)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

ROLE_KINDS = ("ClusterRole", "Role")


@dataclass(frozen=True)
class Grant:
    """One verb of one rule of one role (a ClusterRole, or a Role of `namespace`)."""

    role: str
    group: str
    resource: str
    names: tuple[str, ...]
    verb: str
    namespace: str = ""  # a Role's; "" for a ClusterRole

    @property
    def id(self) -> str:
        return f"{self.role}/{self.resource}/{self.verb}"

    def rule(self) -> dict[str, Any]:
        rule: dict[str, Any] = {
            "apiGroups": [self.group],
            "resources": [self.resource],
            "verbs": [self.verb],
        }
        if self.names:
            rule["resourceNames"] = list(self.names)
        return rule

    @property
    def denied_text(self) -> str:
        """The API server's words for this denial, as the program must pass them on."""
        return f'cannot {self.verb} resource "{self.resource}"'


def grants(docs: Iterable[dict[str, Any]]) -> list[Grant]:
    """Every (role, group, resource, verb) of the ClusterRoles and Roles among `docs`."""
    out = []
    for doc in docs:
        if doc["kind"] not in ROLE_KINDS:
            continue
        role = str(doc["metadata"]["name"])
        namespace = str(doc["metadata"].get("namespace") or "") if doc["kind"] == "Role" else ""
        for rule in doc.get("rules") or []:
            for group in rule.get("apiGroups") or [""]:
                for resource in rule["resources"]:
                    for verb in rule["verbs"]:
                        names = tuple(rule.get("resourceNames", []))
                        out.append(Grant(role, group, resource, names, verb, namespace))
    return out
