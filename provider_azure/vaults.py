"""Several vaults in one SecretProviderClass: a per-object `keyvaultName` overriding the SPC's.

An object in the SPC's own vault keeps upstream's version id `<type>/<name>`, so an existing
SecretProviderClass records exactly what it recorded before. An object in another vault gets
`<type>/<name>@<vault>` (the vault name in lower case, as DNS reads it): `@` occurs in neither a
Key Vault object name nor a vault name, so the id cannot collide with another object's or with a
history file's `<type>/<name>/<i>` (which becomes `<type>/<name>@<vault>/<i>`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from .errors import invalid
from .limits import MAX_VAULTS_PER_MOUNT, shown

VAULT_NAME = re.compile(r"^[-A-Za-z0-9]{3,24}$")


def parse_object_vault(where: str, text: str) -> str:
    """An object's `keyvaultName` (empty: the SPC's), by the rule for the SPC's own."""
    if text and not VAULT_NAME.match(text):
        raise invalid(
            f"{where}: keyvaultName {shown(text)} must be a vault name: 3-24 characters of "
            "[-a-zA-Z0-9]",
            "keyvaultName",
        )
    return text


def same_vault(a: str, b: str) -> bool:
    """Vault names are host names: case does not matter."""
    return a.lower() == b.lower()


def object_id(uid: str, vault: str, default_vault: str) -> str:
    """The version id of an object: `uid` in the SPC's vault, `uid@vault` in another."""
    if not vault or same_vault(vault, default_vault):
        return uid
    return f"{uid}@{vault.lower()}"


def check_vault_count(where: str, names: Iterable[str]) -> None:
    """At most MAX_VAULTS_PER_MOUNT distinct vaults: each one is a client and a token budget."""
    distinct = {name.lower() for name in names if name}
    if len(distinct) > MAX_VAULTS_PER_MOUNT:
        raise invalid(
            f"{where}: {len(distinct)} distinct vaults (keyvaultName), at most "
            f"{MAX_VAULTS_PER_MOUNT} in one SecretProviderClass",
            "keyvaultName",
        )
