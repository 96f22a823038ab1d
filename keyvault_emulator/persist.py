"""Optional persistence for the demo and laptops: the whole store as one JSON file, written
(atomically, mode 0600: it holds secrets and private keys) shortly after each change."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization

from .material import load_private_key_pem
from .store import (
    Attributes,
    CertificateVersion,
    Cloud,
    Deleted,
    FederatedCredential,
    Identity,
    Issuer,
    KeyVersion,
    PendingOperation,
    RoleAssignment,
    SecretVersion,
    Store,
    Vault,
)

log = logging.getLogger("keyvault_emulator.persist")
FORMAT = 1


def _attrs(a: Attributes) -> dict[str, Any]:
    return dataclasses.asdict(a)


def _secret(v: SecretVersion) -> dict[str, Any]:
    d = dataclasses.asdict(v)
    d["attributes"] = _attrs(v.attributes)
    return d


def _key(v: KeyVersion) -> dict[str, Any]:
    pem = v.key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    return {
        "version": v.version,
        "key": pem,
        "kty": v.kty,
        "key_ops": v.key_ops,
        "attributes": _attrs(v.attributes),
        "tags": v.tags,
        "managed": v.managed,
    }


def _cert(v: CertificateVersion) -> dict[str, Any]:
    return {
        "version": v.version,
        "cert_der": base64.b64encode(v.cert_der).decode(),
        "chain_der": [base64.b64encode(c).decode() for c in v.chain_der],
        "policy": v.policy,
        "attributes": _attrs(v.attributes),
        "tags": v.tags,
        "preserve_order": v.preserve_order,
    }


def _deleted(d: Deleted, kind: str) -> dict[str, Any]:
    conv: dict[str, Callable[[Any], dict[str, Any]]] = {
        "secrets": _secret,
        "keys": _key,
        "certificates": _cert,
    }
    return {
        "versions": [conv[kind](v) for v in d.versions],
        "deleted_date": d.deleted_date,
        "scheduled_purge_date": d.scheduled_purge_date,
        "key_versions": [_key(v) for v in d.key_versions] if d.key_versions is not None else None,
        "secret_versions": (
            [_secret(v) for v in d.secret_versions] if d.secret_versions is not None else None
        ),
    }


def dump(store: Store) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "tenants": store.tenants,
        "default_tenant": store.default_tenant,
        "token_lifetime": store.token_lifetime,
        "clouds": [dataclasses.asdict(c) for c in store.clouds],
        "issuers": [dataclasses.asdict(i) for i in store.issuers.values()],
        "identities": [dataclasses.asdict(i) for i in store.identities.values()],
        "vaults": [
            {
                "name": v.name,
                "tenant": v.tenant,
                "names": v.names,
                "role_assignments": [dataclasses.asdict(r) for r in v.role_assignments],
                "secrets": {n: [_secret(x) for x in vs] for n, vs in v.secrets.items()},
                "keys": {n: [_key(x) for x in vs] for n, vs in v.keys.items()},
                "certificates": {n: [_cert(x) for x in vs] for n, vs in v.certificates.items()},
                "policies": v.policies,
                "pending": {
                    n: {
                        **dataclasses.asdict(p),
                        "csr_der": base64.b64encode(p.csr_der).decode() if p.csr_der else None,
                    }
                    for n, p in v.pending.items()
                },
                "deleted_secrets": {
                    n: _deleted(d, "secrets") for n, d in v.deleted_secrets.items()
                },
                "deleted_keys": {n: _deleted(d, "keys") for n, d in v.deleted_keys.items()},
                "deleted_certificates": {
                    n: _deleted(d, "certificates") for n, d in v.deleted_certificates.items()
                },
            }
            for v in store.vaults.values()
        ],
    }


def _l_attrs(d: dict[str, Any]) -> Attributes:
    return Attributes(**d)


def _l_secret(d: dict[str, Any]) -> SecretVersion:
    return SecretVersion(**{**d, "attributes": _l_attrs(d["attributes"])})


def _l_key(d: dict[str, Any]) -> KeyVersion:
    return KeyVersion(
        version=d["version"],
        key=load_private_key_pem(d["key"].encode()),
        kty=d["kty"],
        key_ops=d["key_ops"],
        attributes=_l_attrs(d["attributes"]),
        tags=d["tags"],
        managed=d["managed"],
    )


def _l_cert(d: dict[str, Any]) -> CertificateVersion:
    return CertificateVersion(
        version=d["version"],
        cert_der=base64.b64decode(d["cert_der"]),
        chain_der=[base64.b64decode(c) for c in d["chain_der"]],
        policy=d["policy"],
        attributes=_l_attrs(d["attributes"]),
        tags=d["tags"],
        preserve_order=d["preserve_order"],
    )


def _l_deleted(d: dict[str, Any], kind: str) -> Deleted:
    conv: dict[str, Callable[[dict[str, Any]], Any]] = {
        "secrets": _l_secret,
        "keys": _l_key,
        "certificates": _l_cert,
    }
    return Deleted(
        versions=[conv[kind](v) for v in d["versions"]],
        deleted_date=d["deleted_date"],
        scheduled_purge_date=d["scheduled_purge_date"],
        key_versions=[_l_key(v) for v in d["key_versions"]]
        if d.get("key_versions") is not None
        else None,
        secret_versions=(
            [_l_secret(v) for v in d["secret_versions"]]
            if d.get("secret_versions") is not None
            else None
        ),
    )


def load(store: Store, data: dict[str, Any]) -> None:
    if data.get("format") != FORMAT:
        raise ValueError(f"unsupported state format {data.get('format')}")
    store.tenants = {k: list(v) for k, v in data["tenants"].items()}
    store.default_tenant = data["default_tenant"]
    store.token_lifetime = data["token_lifetime"]
    store.clouds = [Cloud(**c) for c in data["clouds"]]
    store.issuers = {i["issuer"]: Issuer(**i) for i in data["issuers"]}
    store.identities = {}
    for i in data["identities"]:
        creds = [FederatedCredential(**c) for c in i.pop("federated_credentials")]
        ident = Identity(**i, federated_credentials=creds)
        store.identities[ident.client_id] = ident
    store.vaults = {}
    for v in data["vaults"]:
        vault = Vault(name=v["name"], tenant=v["tenant"], names=v["names"])
        vault.role_assignments = [RoleAssignment(**r) for r in v["role_assignments"]]
        vault.secrets = {n: [_l_secret(x) for x in vs] for n, vs in v["secrets"].items()}
        vault.keys = {n: [_l_key(x) for x in vs] for n, vs in v["keys"].items()}
        vault.certificates = {n: [_l_cert(x) for x in vs] for n, vs in v["certificates"].items()}
        vault.policies = v["policies"]
        vault.pending = {
            n: PendingOperation(
                **{**p, "csr_der": base64.b64decode(p["csr_der"]) if p["csr_der"] else None}
            )
            for n, p in v["pending"].items()
        }
        vault.deleted_secrets = {
            n: _l_deleted(d, "secrets") for n, d in v["deleted_secrets"].items()
        }
        vault.deleted_keys = {n: _l_deleted(d, "keys") for n, d in v["deleted_keys"].items()}
        vault.deleted_certificates = {
            n: _l_deleted(d, "certificates") for n, d in v["deleted_certificates"].items()
        }
        store.vaults[vault.name] = vault


class Persister:
    def __init__(self, path: Path, delay: float = 0.2) -> None:
        self.path = path
        self.delay = delay
        self._pending: asyncio.TimerHandle | None = None

    def load(self, store: Store) -> bool:
        """True when a saved state was loaded (seeds are then not applied again)."""
        if not self.path.exists():
            return False
        load(store, json.loads(self.path.read_text()))
        log.info("state loaded", extra={"path": str(self.path), "vaults": sorted(store.vaults)})
        return True

    def save(self, store: Store) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(dump(store), fh)
        tmp.replace(self.path)

    def schedule(self, store: Store) -> Callable[[], None]:
        def on_change() -> None:
            if self._pending is not None:
                return
            loop = asyncio.get_running_loop()

            def run() -> None:
                self._pending = None
                try:
                    self.save(store)
                except OSError as exc:
                    log.error("state not saved", extra={"path": str(self.path), "error": str(exc)})

            self._pending = loop.call_later(self.delay, run)

        return on_change
