"""Azure RBAC for the Key Vault data plane: built-in roles as data-action patterns, matched
against the action each operation needs at the object's scope."""

from __future__ import annotations

import fnmatch

from .errors import KeyVaultError
from .store import Identity, Vault

P = "Microsoft.KeyVault/vaults/"

# Data actions of the built-in roles (Azure built-in roles reference, Security section).
ROLES: dict[str, list[str]] = {
    "Key Vault Administrator": [P + "*"],
    "Key Vault Reader": [P + "*/read", P + "secrets/readMetadata/action"],
    "Key Vault Secrets Officer": [P + "secrets/*"],
    "Key Vault Secrets User": [P + "secrets/getSecret/action", P + "secrets/readMetadata/action"],
    "Key Vault Certificates Officer": [
        P + "certificatecas/*",
        P + "certificates/*",
        P + "certificatecontacts/*",
    ],
    "Key Vault Certificate User": [
        P + "certificates/read",
        P + "secrets/getSecret/action",
        P + "secrets/readMetadata/action",
        P + "keys/read",
    ],
    "Key Vault Crypto Officer": [P + "keys/*", P + "keyrotationpolicies/*"],
    "Key Vault Crypto User": [
        P + "keys/read",
        P + "keys/update/action",
        P + "keys/backup/action",
        P + "keys/encrypt/action",
        P + "keys/decrypt/action",
        P + "keys/wrap/action",
        P + "keys/unwrap/action",
        P + "keys/sign/action",
        P + "keys/verify/action",
    ],
    # Management plane only: a common mistake, it grants no data-plane access.
    "Key Vault Contributor": [],
    "Key Vault Crypto Service Encryption User": [
        P + "keys/read",
        P + "keys/wrap/action",
        P + "keys/unwrap/action",
    ],
}
ROLE_ALIASES = {r.lower(): r for r in ROLES} | {
    "key vault certificates user": "Key Vault Certificate User",
    "key vault certificate officer": "Key Vault Certificates Officer",
}


def canonical_role(name: str) -> str:
    role = ROLE_ALIASES.get(name.strip().lower())
    if role is None:
        raise ValueError(f"unknown role {name!r}; known: {', '.join(sorted(ROLES))}")
    return role


def _scope_covers(assigned: str, scope: str) -> bool:
    """A vault-relative assignment scope covers `scope` if it is the vault or a prefix of it."""
    assigned = "/" + assigned.strip("/").lower()
    scope = "/" + scope.strip("/").lower()
    return assigned == "/" or scope == assigned or scope.startswith(assigned + "/")


def allowed(vault: Vault, principal: str, action: str, scope: str) -> bool:
    for ra in vault.role_assignments:
        if ra.principal.lower() != principal.lower() or not _scope_covers(ra.scope, scope):
            continue
        for pattern in ROLES.get(ra.role, []):
            if fnmatch.fnmatchcase(action.lower(), pattern.lower()):
                return True
    return False


def forbidden(
    vault: Vault, identity: Identity | None, client_id: str, action: str, scope: str
) -> KeyVaultError:
    oid = identity.object_id if identity else ""
    resource = (
        "/subscriptions/00000000-0000-0000-0000-000000000000/resourcegroups/emulator"
        f"/providers/microsoft.keyvault/vaults/{vault.name.lower()}{scope.rstrip('/')}"
    )
    message = (
        "Caller is not authorized to perform action on resource.\r\n"
        "If role assignments, deny assignments or role definitions were changed recently, "
        "please observe propagation time.\r\n"
        f"Caller: appid={client_id};oid={oid};iid={vault.tenant}\r\n"
        f"Action: '{action}'\r\n"
        f"Resource: '{resource}'\r\n"
        "Assignment: (not found)\r\n"
        "DenyAssignmentId: null\r\n"
        "DecisionReason: null \r\n"
        f"Vault: {vault.name};location=emulator\r\n"
    )
    return KeyVaultError(403, "Forbidden", message, "ForbiddenByRbac")
