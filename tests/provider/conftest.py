"""The provider suite's own vault, identities and objects, seeded into the session emulator."""

from __future__ import annotations

import base64
import os
import time
from dataclasses import dataclass, field

import pytest

from testbed.emulator import (
    IDENTITY_BINDING_AUDIENCE,
    TENANT_ID,
    WI_ISSUER,
    WI_SUBJECT,
    Emulator,
)

from .pki import Chain, make_chain

VAULT = "kv-ec"  # resolved by tests/netns-hosts; seeded only by this suite
SP_ID, SP_SECRET = "0c000001-0000-4000-8000-0000000000a1", "prov-sp-secret"
SP_DENIED_ID, SP_DENIED_SECRET = "0c000002-0000-4000-8000-0000000000a2", "prov-denied-secret"
MI_SYSTEM = "0a000011-0000-4000-8000-000000000011"
MI_USER = "0a000012-0000-4000-8000-000000000012"
WI_APP = "0a000021-0000-4000-8000-000000000021"
# A user-assigned managed identity the service account is bound to (identity binding).
IB_MI = "0c000031-0000-4000-8000-0000000000b1"
V = [f"{i:032x}" for i in range(1, 10)]


@dataclass
class ProviderWorld:
    emulator: Emulator
    vault: str
    tenant: str
    rsa: Chain
    ec: Chain
    rsa2: Chain
    binary: bytes
    history: list[str]
    secrets: dict[str, str] = field(
        default_factory=lambda: {"clientid": SP_ID, "clientsecret": SP_SECRET}
    )


def _pem_bundle(chain: Chain, reverse: bool = False) -> str:
    certs = [chain.leaf, chain.intermediate, chain.root]
    if reverse:
        certs = [chain.leaf, chain.root, chain.intermediate]
    return (chain.key_pkcs8_pem + b"".join(chain.pem(c) for c in certs)).decode()


@pytest.fixture(scope="session")
def world(emulator: Emulator) -> ProviderWorld:
    rsa, ec, rsa2 = (
        make_chain("rsa", "rsa.test"),
        make_chain("ec", "ec.test"),
        make_chain("rsa", "rsa2.test"),
    )
    binary = os.urandom(64)
    roles = [
        "Key Vault Secrets User",
        "Key Vault Certificate User",
        "Key Vault Crypto User",
        "Key Vault Reader",
    ]
    grants = [
        {"identity": who, "role": r}
        for who in ("prov-sp", "mi-system", "mi-user", "wi-app", "prov-ib-mi")
        for r in roles
    ]
    emulator.seed(
        {
            "identities": [
                {
                    "name": "prov-sp",
                    "type": "servicePrincipal",
                    "clientId": SP_ID,
                    "clientSecret": SP_SECRET,
                },
                {
                    "name": "prov-ib-mi",
                    "type": "userAssigned",
                    "clientId": IB_MI,
                    "federatedCredentials": [
                        {
                            "issuer": WI_ISSUER,
                            "subject": WI_SUBJECT,
                            "audience": IDENTITY_BINDING_AUDIENCE,
                        }
                    ],
                },
                {
                    "name": "prov-denied",
                    "type": "servicePrincipal",
                    "clientId": SP_DENIED_ID,
                    "clientSecret": SP_DENIED_SECRET,
                },
            ],
            "vaults": [
                {
                    "name": VAULT,
                    "tenant": TENANT_ID,
                    "roleAssignments": grants,
                    "secrets": [
                        {"name": "plain", "value": "plain-value"},
                        {"name": "unicode", "value": "h\u00e9llo \u2603"},
                        {"name": "b64", "value": base64.b64encode(binary).decode()},
                        {"name": "hexed", "value": binary.hex()},
                        {
                            "name": "multi",
                            "versions": [
                                {"value": f"multi-{i}", "version": V[i], "enabled": i != 2}
                                for i in range(5)
                            ],
                        },
                    ],
                    "keys": [
                        {"name": "rsa-key", "kty": "RSA", "size": 2048},
                        {"name": "rsa-hsm", "kty": "RSA-HSM", "size": 3072},
                        {"name": "ec-256", "kty": "EC", "curve": "P-256"},
                        {"name": "ec-384", "kty": "EC", "curve": "P-384"},
                        {"name": "ec-521", "kty": "EC-HSM", "curve": "P-521"},
                    ],
                    "certificates": [
                        {
                            "name": "rsa-pem",
                            "pem": _pem_bundle(rsa),
                            "contentType": "application/x-pem-file",
                        },
                        {
                            "name": "rsa-pfx",
                            "pfx": rsa.pfx_b64(cas=[rsa.root, rsa.intermediate]),
                            "contentType": "application/x-pkcs12",
                        },
                        {
                            "name": "ec-pem",
                            "pem": _pem_bundle(ec, reverse=True),
                            "contentType": "application/x-pem-file",
                        },
                        {
                            "name": "ec-pfx",
                            "pfx": ec.pfx_b64(),
                            "contentType": "application/x-pkcs12",
                        },
                        {
                            "name": "cert-disabled",
                            "pfx": rsa2.pfx_b64(),
                            "contentType": "application/x-pkcs12",
                            "enabled": False,
                        },
                        {
                            "name": "leaf-only",
                            "pfx": rsa2.pfx_b64(cas=[]),
                            "contentType": "application/x-pkcs12",
                        },
                        {
                            "name": "cert-multi",
                            "contentType": "application/x-pkcs12",
                            "versions": [
                                {"pfx": rsa2.pfx_b64(), "version": V[0]},
                                {"pfx": rsa.pfx_b64(), "version": V[1]},
                                {"pfx": ec.pfx_b64(), "version": V[2]},
                            ],
                        },
                    ],
                }
            ],
        }
    )
    # Distinct creation times (Key Vault's are in seconds) for objectVersionHistory order.
    history = []
    for i in range(5):
        if i:
            time.sleep(1.05)
        history.append(emulator.set_secret(VAULT, "hist", f"hist-{i}"))
    emulator.set_secret_enabled(VAULT, "hist", history[2], False)
    return ProviderWorld(emulator, VAULT, TENANT_ID, rsa, ec, rsa2, binary, history)
