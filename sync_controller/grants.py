"""The controller's roles (daemonset/sync-controller/rbac.yaml), named in its Forbidden hints:
a denied verb says which role to fix, as the driver's say theirs."""

from __future__ import annotations

from csi_driver.kube import GROUP as SPC_GROUP
from csi_driver.kube import Grants

from .api import GROUP

RBAC_FILE = "daemonset/sync-controller/rbac.yaml"
MANAGER_ROLE = "secrets-store-sync-controller-manager-role"
LEADER_ROLE = "secrets-store-sync-controller-leader-election-role"

GRANTS = Grants(
    "the SecretSync controller",
    {
        (GROUP, "secretsyncs"): MANAGER_ROLE,
        (GROUP, "secretsyncs/status"): MANAGER_ROLE,
        (SPC_GROUP, "secretproviderclasses"): MANAGER_ROLE,
        ("", "secrets"): MANAGER_ROLE,
        ("", "serviceaccounts/token"): MANAGER_ROLE,
        ("", "events"): MANAGER_ROLE,
        ("coordination.k8s.io", "leases"): LEADER_ROLE,
    },
    {},
    RBAC_FILE,
    {LEADER_ROLE: "Role"},
)
