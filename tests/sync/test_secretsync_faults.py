"""Bad input and faults, each row a named condition and a Warning event on the SecretSync
(or the API server's refusal, for what the CRD's validation catches)."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from lightkube import ApiError
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Event, Secret

from testbed.sync_controller import SyncControllerProcess

from .conftest import (
    AUDIENCE,
    NAMESPACE,
    NOROLE_CLIENT,
    OTHER_NAMESPACE,
    POLL,
    VAULT,
    World,
    condition,
    decoded,
    unique,
    until,
)

pytestmark = pytest.mark.peers


async def _failed(world: World, name: str, reason: str, text: str) -> dict[str, Any]:
    async def check() -> dict[str, Any] | None:
        c = condition(await world.get_sync(name), "SecretCreated")
        return c if c.get("status") == "False" and c.get("reason") == reason else None

    c = await until(check, what=f"SecretCreated False {reason}")
    assert text in c["message"], c["message"]

    async def event() -> bool:
        events = [
            e
            async for e in world.admin.list(
                Event, namespace=NAMESPACE, fields={"involvedObject.name": name}
            )
        ]
        return any(
            e.reason == reason
            and e.type == "Warning"
            and e.involvedObject.kind == "SecretSync"
            and text in (e.message or "")
            for e in events
        )

    await until(event, what=f"a {reason} event")
    return c


ROWS = [
    # (id, SPC objects or None for no SPC, secretsync extras, data, reason, text)
    (
        "spc-missing",
        None,
        {},
        {"db-password": "p"},
        "SecretProviderClassMisconfigured",
        "not found",
    ),
    (
        "sa-missing",
        ["db-password"],
        {"service_account": "nobody"},
        {"db-password": "p"},
        "ControllerSyncError",
        'serviceaccounts "nobody" not found',
    ),
    (
        "kv-404",
        ["no-such-secret"],
        {},
        {"no-such-secret": "p"},
        "ProviderError",
        "secret no-such-secret not found in Key Vault kv-sync",
    ),
    (
        "source-path-missing",
        ["db-password"],
        {},
        {"username": "u"},
        "RemoteSecretStoreFetchFailed",
        "file matching sourcePath username not found",
    ),
]


@pytest.mark.parametrize("row", ROWS, ids=[r[0] for r in ROWS])
async def test_failure_rows(world: World, row: tuple[Any, ...]) -> None:
    _id, objects, extra, data, reason, text = row
    spc, name = unique("spc"), unique(_id)
    if objects is not None:
        await world.spc(spc, objects)
    await world.secretsync(name, spc, data, **extra)
    await _failed(world, name, reason, text)
    assert await world.secret(name) is None


async def test_spc_in_another_namespace(world: World) -> None:
    spc, name = unique("spc"), unique("elsewhere")
    await world.spc(spc, ["db-password"], namespace=OTHER_NAMESPACE)
    await world.secretsync(name, spc, {"db-password": "p"})
    await _failed(world, name, "SecretProviderClassMisconfigured", f'"{spc}" not found')


async def test_key_vault_403(world: World) -> None:
    spc, name = unique("spc"), unique("denied")
    await world.spc(spc, ["db-password"], client_id=NOROLE_CLIENT)
    await world.secretsync(name, spc, {"db-password": "p"})
    await _failed(world, name, "ProviderError", "access to Key Vault kv-sync denied (403)")


async def test_same_name_secret_not_ours_left_alone(world: World) -> None:
    spc, name = unique("spc"), unique("taken")
    await world.spc(spc, ["db-password"])
    mine = base64.b64encode(b"not yours").decode()
    await world.admin.create(
        Secret(metadata=ObjectMeta(name=name, namespace=NAMESPACE), data={"k": mine})
    )
    await world.secretsync(name, spc, {"db-password": "p"})
    await _failed(world, name, "ControllerPatchError", "is not owned by this SecretSync")
    secret = await world.secret(name)
    assert secret is not None and secret.data == {"k": mine}
    assert not secret.metadata.ownerReferences


@pytest.mark.parametrize(
    ("field", "value", "text"),
    [
        ("labels", {"secrets-store.sync.x-k8s.io/x": "y"}, "Labels should not contain"),
        ("annotations", {"secrets-store.sync.x-k8s.io/x": "y"}, "Annotations should not contain"),
    ],
)
async def test_reserved_prefix_refused_by_the_api(
    world: World, field: str, value: dict[str, str], text: str
) -> None:
    with pytest.raises(ApiError) as e:
        await world.secretsync(unique("reserved"), "spc", {"a": "b"}, secret_object={field: value})
    assert e.value.status.code == 422 and text in str(e.value.status.message)


@pytest.mark.parametrize("key", ["-bad", "a b", "x/y", "a" * 254])
async def test_invalid_target_key_refused_by_the_api(world: World, key: str) -> None:
    with pytest.raises(ApiError) as e:
        await world.secretsync(unique("badkey"), "spc", {"db-password": key})
    assert e.value.status.code == 422 and "targetKey" in str(e.value.status.message)


async def _recovers(world: World, name: str, data: dict[str, str], within: float) -> None:
    """After the fault: the Secret appears with the data, SecretCreated turns True."""

    async def created() -> bool:
        secret = await world.secret(name)
        c = condition(await world.get_sync(name), "SecretCreated")
        return secret is not None and decoded(secret) == data and c.get("status") == "True"

    await until(created, within=within, what="recovery after the fault")


async def test_provider_down_then_back(world: World) -> None:
    """The sidecar dead (its socket left behind): ProviderError naming the socket; back: synced
    within the backoff (the poll re-queues it too), with no one touching the SecretSync."""
    spc, name = unique("spc"), unique("nopro")
    await world.spc(spc, ["username"])
    world.provider.kill()
    try:
        await world.secretsync(name, spc, {"username": "user"})
        c = await _failed(world, name, "ProviderError", "azure.sock: connect failed")
        assert "code = Unavailable" in c["message"]
        assert await world.secret(name) is None
    finally:
        world.provider.start()
    await _recovers(world, name, {"user": "app-user"}, within=15)


async def test_key_vault_429_then_recovered(world: World) -> None:
    """A persistent 429 (Retry-After 1): the provider's retries run out, ProviderError says
    throttled; the throttle lifted: synced on the next try."""
    spc, name, secret = unique("spc"), unique("throttled"), unique("hot")
    world.emulator.set_secret(VAULT, secret, "cool")
    await world.spc(spc, [secret])
    world.emulator.add_fault(
        service="kv", vault=VAULT, path=f"/secrets/{secret}", status=429, retry_after=1
    )
    try:
        await world.secretsync(name, spc, {secret: "v"})
        await _failed(world, name, "ProviderError", "is throttling requests (429)")
        assert await world.secret(name) is None
        throttled = world.emulator.requests(service="kv", status="429")
        assert sum(1 for r in throttled if secret in r["path"]) >= 2  # the SDK retried
    finally:
        world.emulator.clear_faults()
    await _recovers(world, name, {"v": "cool"}, within=15)


@pytest.mark.parametrize(
    ("secret_type", "text"),
    [
        (
            "kubernetes.io/service-account-token",
            "may not write a Secret of type kubernetes.io/service-account-token "
            "(syncController.validatingAdmissionPolicies.deniedSecretTypes)",
        ),
        ("example.com/custom", "not in syncController.validatingAdmissionPolicies.allowed"),
    ],
)
async def test_secret_type_refused_by_the_admission_policy(
    world: World, secret_type: str, text: str
) -> None:
    """The chart's policy, not the controller, refuses the type; the condition says so."""
    spc, name = unique("spc"), unique("type")
    await world.spc(spc, ["username"])
    annotations = {"kubernetes.io/service-account.name": "app"}  # what that type requires
    await world.secretsync(
        name, spc, {"username": "u"}, type=secret_type, secret_object={"annotations": annotations}
    )
    c = await _failed(world, name, "ControllerPatchError", text)
    assert "ValidatingAdmissionPolicy" in c["message"]
    assert await world.secret(name) is None


async def test_audience_not_allowed(world: World) -> None:
    """A controller started with an audience the chart's values do not list: its token request
    is refused by the admission policy, ControllerSyncError says which audiences are allowed."""
    world.controller.stop()  # releases the Lease
    wrong = _controller(world, "wrong-audience.log", "api://not-allowed").start()
    try:
        spc, name = unique("spc"), unique("audience")
        await world.spc(spc, ["username"])
        await world.secretsync(name, spc, {"username": "u"})
        c = await _failed(world, name, "ControllerSyncError", "api://not-allowed")
        assert "only for one of the audiences api://AzureADTokenExchange" in c["message"]
        assert await world.secret(name) is None
    finally:
        wrong.stop()
        world.controller = _controller(world, "controller-again.log", AUDIENCE).start()


def _controller(world: World, log: str, audience: str) -> SyncControllerProcess:
    return SyncControllerProcess(
        world.kubeconfig,
        world.provider.socket.parent,
        world.root / log,
        f"--token-request-audience={audience}",
        f"--rotation-poll-interval={POLL}s",
        "--leader-elect",
        "--leader-election-lease-duration=3s",
        "--leader-election-renew-deadline=2s",
        "--leader-election-retry-period=0.5s",
    )
