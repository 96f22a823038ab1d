"""The emulator's state: tenants, identities, vaults and their versioned objects, in memory.

Objects are stored by vault-relative name and version; URLs are built at answer time from the
host the client used, so one vault answers under any of its cloud's DNS suffixes.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec, rsa

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey

RECOVERY_LEVEL = "Recoverable+Purgeable"
RECOVERABLE_DAYS = 90


def now() -> int:
    return int(time.time())


def new_version() -> str:
    return uuid.uuid4().hex


@dataclass
class Attributes:
    enabled: bool = True
    nbf: int | None = None
    exp: int | None = None
    created: int = field(default_factory=now)
    updated: int = field(default_factory=now)

    def to_json(self, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {"enabled": self.enabled}
        if self.nbf is not None:
            out["nbf"] = self.nbf
        if self.exp is not None:
            out["exp"] = self.exp
        out["created"] = self.created
        out["updated"] = self.updated
        out["recoveryLevel"] = RECOVERY_LEVEL
        out["recoverableDays"] = RECOVERABLE_DAYS
        if extra:
            out.update(extra)
        return out


def after(previous: list[Any], attrs: Attributes) -> None:
    """Makes a new version's `created` later than its predecessor's, so that versions made in
    the same second (seeds, tests) still sort newest-first by `created`, as clients sort them."""
    if previous and attrs.created <= previous[-1].attributes.created:
        attrs.created = previous[-1].attributes.created + 1
        attrs.updated = max(attrs.updated, attrs.created)


@dataclass
class SecretVersion:
    version: str
    value: str
    content_type: str | None = None
    attributes: Attributes = field(default_factory=Attributes)
    tags: dict[str, str] | None = None
    managed: bool = False  # backs a certificate version
    key_version: str | None = None  # the certificate key's version, for `kid`


@dataclass
class KeyVersion:
    version: str
    key: PrivateKey
    kty: str  # "RSA", "RSA-HSM", "EC", "EC-HSM"
    key_ops: list[str]
    attributes: Attributes = field(default_factory=Attributes)
    tags: dict[str, str] | None = None
    managed: bool = False


@dataclass
class CertificateVersion:
    version: str
    cert_der: bytes
    chain_der: list[bytes]  # issuers after the leaf, in the order they were given
    policy: dict[str, Any]
    attributes: Attributes = field(default_factory=Attributes)
    tags: dict[str, str] | None = None
    preserve_order: bool = False


@dataclass
class PendingOperation:
    request_id: str
    csr_der: bytes | None
    issuer: str
    status: str  # "inProgress" | "completed"
    polled: bool = False


@dataclass
class Deleted:
    """A soft-deleted object: its versions, kept until purged or recovered."""

    versions: list[Any]
    deleted_date: int
    scheduled_purge_date: int
    # A deleted certificate carries its managed key and secret along.
    key_versions: list[KeyVersion] | None = None
    secret_versions: list[SecretVersion] | None = None


@dataclass
class RoleAssignment:
    principal: str  # the identity's object id
    role: str
    scope: str = (
        "/"  # vault-relative: "/", "/secrets/<name>", "/keys/<name>", "/certificates/<name>"
    )


@dataclass
class Vault:
    name: str
    tenant: str
    secrets: dict[str, list[SecretVersion]] = field(default_factory=dict)
    keys: dict[str, list[KeyVersion]] = field(default_factory=dict)
    certificates: dict[str, list[CertificateVersion]] = field(default_factory=dict)
    policies: dict[str, dict[str, Any]] = field(default_factory=dict)
    pending: dict[str, PendingOperation] = field(default_factory=dict)
    deleted_secrets: dict[str, Deleted] = field(default_factory=dict)
    deleted_keys: dict[str, Deleted] = field(default_factory=dict)
    deleted_certificates: dict[str, Deleted] = field(default_factory=dict)
    role_assignments: list[RoleAssignment] = field(default_factory=list)
    # Names are case-insensitive: the dicts above are keyed by the lower-case name and this
    # keeps the spelling the object was created with, as "<kind>/<lower>" -> name.
    names: dict[str, str] = field(default_factory=dict)

    def display(self, kind: str, name: str) -> str:
        return self.names.get(f"{kind}/{name.lower()}", name)

    def remember_name(self, kind: str, name: str) -> None:
        self.names.setdefault(f"{kind}/{name.lower()}", name)


@dataclass
class FederatedCredential:
    issuer: str
    subject: str
    audiences: list[str]
    name: str = ""


@dataclass
class Identity:
    """A service principal, app registration or managed identity: anything that gets a token."""

    name: str
    kind: str  # "servicePrincipal" | "systemAssigned" | "userAssigned"
    client_id: str
    object_id: str
    tenant: str
    client_secrets: list[str] = field(default_factory=list)
    federated_credentials: list[FederatedCredential] = field(default_factory=list)
    resource_id: str | None = None

    @property
    def managed(self) -> bool:
        return self.kind in ("systemAssigned", "userAssigned")


@dataclass
class Issuer:
    """A workload-identity token issuer (e.g. a kube-apiserver) and where its keys are."""

    issuer: str
    jwks: dict[str, Any] | None = None
    jwks_uri: str | None = None
    ca_file: str | None = None
    bearer_token_file: str | None = None


@dataclass
class Cloud:
    vault_suffix: str  # e.g. "vault.azure.net"
    authority_host: str  # e.g. "login.microsoftonline.com"


DEFAULT_CLOUDS = [
    Cloud("vault.azure.net", "login.microsoftonline.com"),
    Cloud("vault.custom-cloud.test", "login.custom-cloud.test"),
]


@dataclass
class Store:
    tenants: dict[str, list[str]] = field(default_factory=dict)  # id -> domain names
    default_tenant: str | None = None
    identities: dict[str, Identity] = field(default_factory=dict)  # by client id
    vaults: dict[str, Vault] = field(default_factory=dict)
    issuers: dict[str, Issuer] = field(default_factory=dict)
    clouds: list[Cloud] = field(default_factory=lambda: list(DEFAULT_CLOUDS))
    token_lifetime: int = 3600

    def resolve_tenant(self, tenant: str) -> str | None:
        """A tenant id for a tenant id or one of its domain names."""
        low = tenant.lower()
        for tid, domains in self.tenants.items():
            if tid.lower() == low or low in (d.lower() for d in domains):
                return tid
        return None

    def find_identity(self, ref: str) -> Identity | None:
        """By client id, object id, resource id or name."""
        if ref in self.identities:
            return self.identities[ref]
        low = ref.lower()
        for ident in self.identities.values():
            if low in (
                ident.client_id.lower(),
                ident.object_id.lower(),
                (ident.resource_id or "").lower(),
                ident.name.lower(),
            ):
                return ident
        return None

    def authority_hosts(self) -> set[str]:
        return {c.authority_host.lower() for c in self.clouds}

    def cloud_for_vault_host(self, host: str) -> Cloud | None:
        suffix = host.split(".", 1)[1] if "." in host else ""
        for cloud in self.clouds:
            if cloud.vault_suffix.lower() == suffix:
                return cloud
        return None
