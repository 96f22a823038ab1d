"""Access tokens the emulator's Entra ID issues and its Key Vault accepts (RS256 JWTs, v1 shape)."""

from __future__ import annotations

import base64
import hashlib
import time
import uuid
from dataclasses import dataclass
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa

from .store import Identity

KEY_VAULT_APP_ID = "cfa8b339-82a2-471a-a3c9-0fc0be7a4093"
CLOCK_SKEW = 300  # seconds, as Entra ID and Key Vault allow


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64url_uint(value: int) -> str:
    return b64url(value.to_bytes((value.bit_length() + 7) // 8 or 1, "big"))


def resource_from_scope(scope: str) -> str:
    """`https://vault.azure.net/.default` -> `https://vault.azure.net` (the token's audience)."""
    for part in scope.split():
        if part.endswith("/.default"):
            return part[: -len("/.default")]
    return scope.split()[0] if scope.split() else ""


@dataclass
class Caller:
    """The verified claims Key Vault acts on."""

    client_id: str
    object_id: str
    tenant_id: str
    audience: str
    expires: int


class TokenAuthority:
    def __init__(self, key: rsa.RSAPrivateKey, cert_der: bytes) -> None:
        self._key = key
        self._public = key.public_key()
        self.x5t = b64url(hashlib.sha1(cert_der).digest())  # noqa: S324  RFC 7515 x5t
        self.kid = self.x5t
        self._cert_der = cert_der
        self._verified: dict[str, Caller] = {}

    def jwks(self) -> dict[str, Any]:
        numbers = self._public.public_numbers()
        return {
            "keys": [
                {
                    "kty": "RSA",
                    "use": "sig",
                    "kid": self.kid,
                    "x5t": self.x5t,
                    "n": b64url_uint(numbers.n),
                    "e": b64url_uint(numbers.e),
                    "x5c": [base64.b64encode(self._cert_der).decode()],
                }
            ]
        }

    def mint(
        self, identity: Identity, audience: str, lifetime: int, not_before_offset: int = 0
    ) -> tuple[str, int]:
        """A v1 access token for `identity` and the resource `audience`; returns (jwt, exp)."""
        issued = int(time.time())
        exp = issued + lifetime
        claims: dict[str, Any] = {
            "aud": audience,
            "iss": f"https://sts.windows.net/{identity.tenant}/",
            "iat": issued + not_before_offset,
            "nbf": issued + not_before_offset,
            "exp": exp,
            "aio": b64url(uuid.uuid4().bytes),
            "appid": identity.client_id,
            "appidacr": "1" if identity.client_secrets else "2",
            "idp": f"https://sts.windows.net/{identity.tenant}/",
            "idtyp": "app",
            "oid": identity.object_id,
            "rh": "0.emulator.",
            "sub": identity.object_id,
            "tid": identity.tenant,
            "uti": b64url(uuid.uuid4().bytes),
            "ver": "1.0",
        }
        if identity.resource_id:
            claims["xms_mirid"] = identity.resource_id
        token = jwt.encode(
            claims, self._key, algorithm="RS256", headers={"kid": self.kid, "x5t": self.x5t}
        )
        return token, exp

    def verify(self, token: str) -> dict[str, Any]:
        """Signature and time checks; audience and tenant are the caller's business.

        Raises jwt.InvalidTokenError subclasses.
        """
        return jwt.decode(
            token,
            self._public,
            algorithms=["RS256"],
            options={"verify_aud": False, "require": ["exp", "aud", "tid"]},
            leeway=CLOCK_SKEW,
        )

    def cached_caller(self, token: str) -> Caller | None:
        caller = self._verified.get(token)
        if caller is not None and caller.expires + CLOCK_SKEW < time.time():
            del self._verified[token]
            return None
        return caller

    def remember(self, token: str, caller: Caller) -> None:
        if len(self._verified) > 10000:
            self._verified.clear()
        self._verified[token] = caller
