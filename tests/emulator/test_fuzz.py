"""Random requests never make the emulator fail (5xx) or hang: every answer is a Key Vault
error body or a success. Names are random (prefix fz-) so seeded objects stay untouched."""

from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from testbed import emulator as t
from testbed.emulator import Emulator
from testbed.kvhttp import Raw, validate

KINDS = ["secrets", "keys", "certificates", "deletedsecrets", "deletedkeys", "deletedcertificates"]
TAILS = [
    "",
    "/",
    "/versions",
    "/create",
    "/import",
    "/pending",
    "/policy",
    "/recover",
    "/0123456789abcdef0123456789abcdef",
    "/0123456789abcdef0123456789abcdef/sign",
    "/x/y/z",
]
NAME = st.from_regex(r"fz-[0-9a-zA-Z_.~-]{0,12}", fullmatch=True)
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)
BODY = st.one_of(
    st.none(),
    st.binary(max_size=64),
    JSON.map(lambda v: json.dumps(v).encode()),
    st.fixed_dictionaries(
        {},
        optional={
            "value": st.text(max_size=16),
            "kty": st.sampled_from(["RSA", "EC", "oct", "x"]),
            "crv": st.sampled_from(["P-256", "P-1"]),
            "key_size": st.integers(-1, 5000),
            "attributes": JSON,
            "tags": JSON,
            "policy": JSON,
            "pwd": st.text(max_size=4),
            "alg": st.sampled_from(["RS256", "ES256", "RSA-OAEP", "bogus"]),
        },
    ).map(lambda v: json.dumps(v).encode()),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    method=st.sampled_from(["GET", "PUT", "POST", "PATCH", "DELETE"]),
    kind=st.sampled_from(KINDS),
    name=NAME,
    tail=st.sampled_from(TAILS),
    body=BODY,
    maxresults=st.one_of(st.none(), st.text(max_size=3)),
)
def test_no_server_errors(
    emulator: Emulator,
    method: str,
    kind: str,
    name: str,
    tail: str,
    body: bytes | None,
    maxresults: str | None,
) -> None:
    raw = _raw(emulator)
    params = {} if maxresults is None else {"maxresults": maxresults}
    resp = raw.call(method, f"/{kind}/{name}{tail}", raw=body, params=params)
    assert resp.status_code < 500, (resp.status_code, resp.text)
    if resp.status_code >= 400:
        validate("KeyVaultError", resp.json())


_RAW: dict[str, Raw] = {}


def _raw(emulator: Emulator) -> Raw:
    if "officer" not in _RAW:
        _RAW["officer"] = Raw(emulator, t.SP_OFFICER_ID)
    return _RAW["officer"]


FORM_VALUE = st.one_of(
    st.text(max_size=12),
    st.sampled_from(
        [
            t.SP_READER_ID,
            t.WI_APP_CLIENT_ID,
            "client_credentials",
            "https://vault.azure.net/.default",
            "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            "a.b.c",
        ]
    ),
)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    tenant=st.sampled_from([t.TENANT_ID, "common", "emulator.test", "nope"]),
    form=st.dictionaries(
        st.sampled_from(
            [
                "grant_type",
                "client_id",
                "client_secret",
                "scope",
                "resource",
                "client_assertion",
                "client_assertion_type",
            ]
        ),
        FORM_VALUE,
        max_size=6,
    ),
    v2=st.booleans(),
)
def test_token_endpoint_never_fails(
    emulator: Emulator, tenant: str, form: dict[str, str], v2: bool
) -> None:
    path = "oauth2/v2.0/token" if v2 else "oauth2/token"
    resp = _raw(emulator).session.post(
        f"https://login.microsoftonline.com/{tenant}/{path}", data=form, timeout=10
    )
    assert resp.status_code < 500, resp.text
    if resp.status_code >= 400:
        validate("EntraError", resp.json(), "entra")


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    query=st.dictionaries(
        st.sampled_from(
            [
                "api-version",
                "resource",
                "client_id",
                "object_id",
                "msi_res_id",
                "mi_res_id",
                "principal_id",
            ]
        ),
        st.text(max_size=10),
        max_size=4,
    ),
    metadata=st.sampled_from([None, "true", "false", "TRUE"]),
)
def test_imds_never_fails(emulator: Emulator, query: dict[str, str], metadata: str | None) -> None:
    headers = {"Metadata": metadata} if metadata is not None else {}
    resp = _raw(emulator).session.get(
        "http://169.254.169.254/metadata/identity/oauth2/token",
        params=query,
        headers=headers,
        timeout=10,
    )
    assert resp.status_code < 500, resp.text
    validate("ImdsError" if resp.status_code >= 400 else "ImdsToken", resp.json(), "entra")
