"""Azure cloud environments, by go-autorest name, and the AzureStackCloud environment file.

Upstream resolves `cloudName` with go-autorest's `EnvironmentFromName` (case-insensitive) and, for
`AzureStackCloud`, reads the JSON file named by `AZURE_ENVIRONMENT_FILEPATH` (which it sets
process-wide from `cloudEnvFileName`). We read the file per mount instead of mutating the
environment, so concurrent mounts with different files cannot race.
"""

from __future__ import annotations

import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from .errors import ProviderError, invalid
from .limits import MAX_ENV_FILE, cut

ENVIRONMENT_FILEPATH = "AZURE_ENVIRONMENT_FILEPATH"


@dataclass(frozen=True)
class CloudEnvironment:
    name: str
    active_directory_endpoint: str
    key_vault_endpoint: str
    key_vault_dns_suffix: str

    @property
    def authority_host(self) -> str:
        return self.active_directory_endpoint.rstrip("/")


PUBLIC = CloudEnvironment(
    "AzurePublicCloud",
    "https://login.microsoftonline.com/",
    "https://vault.azure.net/",
    "vault.azure.net",
)
_KNOWN = {
    "AZUREPUBLICCLOUD": PUBLIC,
    "AZURECLOUD": PUBLIC,
    "AZUREUSGOVERNMENTCLOUD": CloudEnvironment(
        "AzureUSGovernmentCloud",
        "https://login.microsoftonline.us/",
        "https://vault.usgovcloudapi.net/",
        "vault.usgovcloudapi.net",
    ),
    "AZURECHINACLOUD": CloudEnvironment(
        "AzureChinaCloud",
        "https://login.chinacloudapi.cn/",
        "https://vault.azure.cn/",
        "vault.azure.cn",
    ),
    "AZUREGERMANCLOUD": CloudEnvironment(
        "AzureGermanCloud",
        "https://login.microsoftonline.de/",
        "https://vault.microsoftazure.de/",
        "vault.microsoftazure.de",
    ),
}
STACK = "AZURESTACKCLOUD"


def _refused(message: str) -> ProviderError:
    return invalid(message, "cloudName")


def from_name(name: str, env_file: str = "") -> CloudEnvironment:
    """The environment for `name`; for AzureStackCloud, from `env_file`."""
    key = name.strip().upper()
    if key in _KNOWN:
        return _KNOWN[key]
    if key == STACK:
        path = env_file or os.environ.get(ENVIRONMENT_FILEPATH, "")
        if not path:
            raise _refused(
                f"cloudName {cut(name)} is not valid: AzureStackCloud needs cloudEnvFileName "
                f"(or {ENVIRONMENT_FILEPATH}) naming the environment JSON file"
            )
        return from_file(path)
    raise _refused(
        f"cloudName {cut(name)} is not valid: expected one of AzurePublicCloud, "
        "AzureUSGovernmentCloud, AzureChinaCloud, AzureGermanCloud, AzureStackCloud"
    )


def _read_small(path: Path, where: str) -> bytes:
    """A regular file of at most MAX_ENV_FILE bytes (a pod author names the path)."""
    # O_NONBLOCK: opening a FIFO must not wait for a writer.
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise _refused(f"{where}: must be a regular file")
        data = handle.read(MAX_ENV_FILE + 1)
    if len(data) > MAX_ENV_FILE:
        raise _refused(f"{where}: must be at most {MAX_ENV_FILE} bytes")
    return data


def from_file(path: str) -> CloudEnvironment:
    """Parse go-autorest's environment JSON (`activeDirectoryEndpoint`, `keyVaultDNSSuffix`)."""
    where = f"cloudEnvFileName {cut(path, 256)}"
    try:
        data = json.loads(_read_small(Path(path), where))
    except OSError as exc:
        raise _refused(f"{where}: cannot read the file: {exc.strerror}") from None
    except (ValueError, RecursionError):
        raise _refused(f"{where}: not valid JSON") from None
    if not isinstance(data, dict):
        raise _refused(f"{where}: must hold a JSON object")
    missing = [
        key
        for key in ("activeDirectoryEndpoint", "keyVaultDNSSuffix")
        if not isinstance(data.get(key), str) or not data.get(key)
    ]
    if missing:
        raise _refused(f"{where}: missing {', '.join(missing)}")
    suffix = str(data["keyVaultDNSSuffix"])
    return CloudEnvironment(
        name=str(data.get("name") or "AzureStackCloud"),
        active_directory_endpoint=str(data["activeDirectoryEndpoint"]),
        key_vault_endpoint=str(data.get("keyVaultEndpoint") or f"https://{suffix}/"),
        key_vault_dns_suffix=suffix,
    )
