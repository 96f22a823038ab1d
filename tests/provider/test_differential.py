"""Differential: the same Mount requests to our provider and to the upstream Go provider v1.8.2,
on the same emulator: same files (paths, modes, bytes) and object versions. Where we differ on
purpose, the difference is asserted here and listed in docs/compatibility.md."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from testbed.emulator import (
    IDENTITY_BINDING_AUDIENCE,
    TOKEN_PROXY_SNI,
    TOKEN_PROXY_URL,
    workload_token,
)
from testbed.mount_attributes import attributes, objects_yaml
from testbed.peers import peer
from testbed.provider import ProviderProcess, files_of, ours, upstream, versions_of

from .conftest import IB_MI, MI_USER, WI_APP, ProviderWorld

pytestmark = pytest.mark.peers

SECRETS = [
    {"objectName": "plain", "objectType": "secret"},
    {
        "objectName": "unicode",
        "objectType": "secret",
        "objectEncoding": "utf-8",
        "filePermission": "0600",
    },
    {"objectName": "b64", "objectType": "secret", "objectEncoding": "base64"},
    {
        "objectName": "hexed",
        "objectType": "secret",
        "objectEncoding": "HEX",
        "filePermission": "0400",
    },
    {
        "objectName": "multi",
        "objectType": "secret",
        "objectVersion": f"{2:032x}",
        "objectAlias": "dir/pinned",
    },
]
KEYS = [
    {"objectName": n, "objectType": "key"}
    for n in ("rsa-key", "rsa-hsm", "ec-256", "ec-384", "ec-521", "rsa-pfx", "ec-pem")
]
CERTS = [
    obj
    for name in ("rsa-pem", "rsa-pfx", "ec-pem", "ec-pfx", "leaf-only")
    for obj in (
        {"objectName": name, "objectType": "cert", "objectAlias": f"{name}.cert"},
        {"objectName": name, "objectType": "secret", "objectAlias": f"{name}.secret"},
        {
            "objectName": name,
            "objectType": "secret",
            "objectFormat": "pem",
            "objectAlias": f"{name}.pem",
        },
        {
            "objectName": name,
            "objectType": "secret",
            "objectFormat": "pfx",
            "objectAlias": f"{name}.pfx",
        },
        {
            "objectName": name,
            "objectType": "secret",
            "objectFormat": "pfx",
            "objectEncoding": "base64",
            "objectAlias": f"{name}.bin",
        },
    )
    if name.endswith("pfx") or obj.get("objectEncoding") is None
]
HISTORY = [
    {"objectName": "hist", "objectType": "secret", "objectVersionHistory": 3},
    {
        "objectName": "hist",
        "objectType": "secret",
        "objectVersionHistory": 2,
        "objectAlias": "h2",
        "filePermission": "0640",
    },
    {"objectName": "multi", "objectType": "secret", "objectVersionHistory": 1, "objectAlias": "m1"},
    {"objectName": "cert-multi", "objectType": "cert", "objectVersionHistory": 5},
]
PEM_CERTS = [o for o in CERTS if o["objectName"].endswith("pem")]
PFX_CERTS = [o for o in CERTS if not o["objectName"].endswith("pem")]
CASES = {
    "secrets": SECRETS,
    "keys": KEYS,
    "pem-certs": PEM_CERTS,
    "pfx-certs": PFX_CERTS,
    "history": HISTORY,
}


@pytest.fixture(scope="module")
def go_binary() -> Path:
    return peer("azure-provider")


def _pair(
    tmp: Path, go_binary: Path, *flags: str, port: int = 18000
) -> tuple[ProviderProcess, ProviderProcess]:
    a = ours(
        str(tmp / "ours.sock"),
        *flags,
        healthz_port=port + 989,
        prometheus_port=port + 898,
        log=tmp / "ours.log",
    )
    a.start()
    try:
        b = upstream(go_binary, str(tmp / "go.sock"), *flags, log=tmp / "go.log")
        b.start()
    except BaseException:
        a.stop()
        raise
    return a, b


@pytest.fixture(scope="module")
def pair(
    tmp_path_factory: pytest.TempPathFactory, go_binary: Path, world: ProviderWorld
) -> Iterator[tuple[ProviderProcess, ProviderProcess]]:
    # Both with the session emulator's identity-binding proxy (no effect on other identities).
    proxy = (f"--token-proxy-url={TOKEN_PROXY_URL}", f"--sni-name={TOKEN_PROXY_SNI}")
    a, b = _pair(tmp_path_factory.mktemp("diff"), go_binary, *proxy)
    yield a, b
    a.stop()
    b.stop()


def both(
    pair: tuple[ProviderProcess, ProviderProcess],
    attrib: dict[str, str],
    secrets: dict[str, str] | None,
):  # type: ignore[no-untyped-def]
    return pair[0].mount(attrib, secrets), pair[1].mount(attrib, secrets)


@pytest.mark.parametrize("case", sorted(CASES))
def test_same_files_and_versions(pair, world: ProviderWorld, case: str) -> None:  # type: ignore[no-untyped-def]
    attrib = attributes(vault=world.vault, tenant=world.tenant, objects=objects_yaml(*CASES[case]))
    mine, theirs = both(pair, attrib, world.secrets)
    assert [f[0] for f in files_of(mine)] == [f[0] for f in files_of(theirs)]
    for a, b in zip(files_of(mine), files_of(theirs), strict=True):
        assert a == b, f"{a[0]} differs"
    assert versions_of(mine) == versions_of(theirs)


@pytest.mark.parametrize(
    "flags", [("--write-cert-and-key-in-separate-files=true",), ("--construct-pem-chain=false",)]
)
def test_same_files_with_flags(
    tmp_path: Path, go_binary: Path, pair, world: ProviderWorld, flags: tuple[str, ...]
) -> None:  # type: ignore[no-untyped-def]
    pair[1].stop()  # the Go provider binds fixed ports: one at a time
    try:
        a, b = _pair(tmp_path, go_binary, *flags, port=19000)
        try:
            objs = [o for o in CERTS if o["objectType"] == "secret"] + SECRETS[:2]
            attrib = attributes(vault=world.vault, tenant=world.tenant, objects=objects_yaml(*objs))
            mine, theirs = a.mount(attrib, world.secrets), b.mount(attrib, world.secrets)
            assert files_of(mine) == files_of(theirs)
            assert versions_of(mine) == versions_of(theirs)
        finally:
            a.stop()
            b.stop()
    finally:
        pair[1].start()


@pytest.mark.parametrize("identity", ["mi-system", "mi-user", "workload", "binding"])
def test_same_files_with_other_identities(pair, world: ProviderWorld, identity: str) -> None:  # type: ignore[no-untyped-def]
    extra: dict[str, str] = {}
    tokens = None
    if identity.startswith("mi"):
        extra["useVMManagedIdentity"] = "true"
        if identity == "mi-user":
            extra["userAssignedIdentityID"] = MI_USER
    elif identity == "binding":
        # Only the identity-binding token: the Go provider must pick it by its audience.
        extra.update(clientID=IB_MI, useAzureTokenProxy="true")
        tokens = {IDENTITY_BINDING_AUDIENCE: workload_token(audience=IDENTITY_BINDING_AUDIENCE)}
    else:
        extra["clientID"] = WI_APP
        tokens = {"api://AzureADTokenExchange": workload_token()}
    attrib = attributes(
        vault=world.vault,
        tenant=world.tenant,
        objects=objects_yaml(*SECRETS),
        tokens=tokens,
        **extra,
    )
    world.emulator.clear_requests()
    mine, theirs = both(pair, attrib, None)
    assert files_of(mine) == files_of(theirs) and versions_of(mine) == versions_of(theirs)
    if identity == "binding":
        # Both exchanged the token at the proxy, none at Entra ID: the Go provider reads the
        # OpenID configuration there and posts once; ours posts at least once (concurrent
        # first GETs may each ask before the first token is cached).
        seen = [
            (r["service"], r["method"], r["path"], r["status"])
            for r in world.emulator.requests()
            if r["service"] == "token-proxy" or r["identity"] == IB_MI
        ]
        token_path = f"/{world.tenant}/oauth2/v2.0/token"
        openid = f"/{world.tenant}/v2.0/.well-known/openid-configuration"
        assert seen.count(("token-proxy", "POST", token_path, 200)) >= 2, seen
        assert ("token-proxy", "GET", openid, 200) in seen, seen
        assert not [r for r in seen if r[0] == "entra"], seen


def _error(
    process: ProviderProcess, attrib: dict[str, str], secrets: dict[str, str] | None
) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        process.mount(attrib, secrets)
    return info.value


def test_deliberate_difference_error_codes_keep_prefix(pair, world: ProviderWorld) -> None:  # type: ignore[no-untyped-def]
    cases = [
        (
            attributes(vault=world.vault, tenant="", objects=objects_yaml(*SECRETS[:1])),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (
            attributes(
                vault=world.vault,
                tenant=world.tenant,
                objects=objects_yaml({"objectName": "nope", "objectType": "secret"}),
            ),
            grpc.StatusCode.NOT_FOUND,
        ),
    ]
    for attrib, code in cases:
        mine, theirs = (
            _error(pair[0], attrib, world.secrets),
            _error(pair[1], attrib, world.secrets),
        )
        assert theirs.code() is grpc.StatusCode.UNKNOWN and mine.code() is code
        prefix = "failed to mount objects, error: "
        assert mine.details().startswith(prefix) and theirs.details().startswith(prefix)
        common = theirs.details().split(":")[0:2]
        assert mine.details().split(":")[0:2] == common


def test_deliberate_difference_bad_file_permission(pair, world: ProviderWorld) -> None:  # type: ignore[no-untyped-def]
    attrib = attributes(
        vault=world.vault,
        tenant=world.tenant,
        objects=objects_yaml(
            {"objectName": "plain", "objectType": "secret", "filePermission": "0999"}
        ),
    )
    theirs = pair[1].mount(attrib, world.secrets)
    assert files_of(theirs)[0][1] == 0  # upstream: mode 0, silently
    mine = _error(pair[0], attrib, world.secrets)
    assert (
        mine.code() is grpc.StatusCode.INVALID_ARGUMENT
        and "filePermission '0999'" in mine.details()
    )


def test_deliberate_difference_latest(pair, world: ProviderWorld) -> None:  # type: ignore[no-untyped-def]
    attrib = attributes(
        vault=world.vault,
        tenant=world.tenant,
        objects=objects_yaml(
            {"objectName": "plain", "objectType": "secret", "objectVersion": "latest"}
        ),
    )
    mine = pair[0].mount(attrib, world.secrets)
    assert files_of(mine)[0][2] == b"plain-value"
    # upstream sends /secrets/plain/latest to Key Vault, which has no such version: the
    # difference docs/compatibility.md lists (not "either way")
    with pytest.raises(grpc.RpcError) as info:
        pair[1].mount(attrib, world.secrets)
    exc = info.value
    assert isinstance(exc, grpc.Call)
    assert exc.code() is grpc.StatusCode.UNKNOWN, exc
    assert "latest" in (exc.details() or ""), exc.details()


def test_same_files_in_a_custom_cloud(pair, world: ProviderWorld, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    import json

    from testbed.emulator import SP_READER_ID, SP_READER_SECRET

    env = tmp_path / "azurestackcloud.json"
    env.write_text(
        json.dumps(
            {
                "name": "AzureStackCloud",
                "activeDirectoryEndpoint": "https://login.custom-cloud.test/",
                "keyVaultEndpoint": "https://vault.custom-cloud.test/",
                "keyVaultDNSSuffix": "vault.custom-cloud.test",
                "resourceManagerEndpoint": "https://management.custom-cloud.test/",
                "managementPortalURL": "https://portal.custom-cloud.test/",
            }
        )
    )
    attrib = attributes(
        vault="kv-custom",
        tenant=world.tenant,
        objects=objects_yaml({"objectName": "custom-secret", "objectType": "secret"}),
        cloudName="AzureStackCloud",
        cloudEnvFileName=str(env),
    )
    secrets = {"clientid": SP_READER_ID, "clientsecret": SP_READER_SECRET}
    mine, theirs = both(pair, attrib, secrets)
    assert files_of(mine) == files_of(theirs) == [("custom-secret", 0o644, b"custom-cloud-value")]
