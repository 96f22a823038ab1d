"""The SecretSync controller's pure parts: the API parsed once (api.parse), the conditions
(set as apimachinery's SetStatusCondition), the keyed hash and digest, the data mapping, the
ownership rule, and the RBAC hints naming the controller's roles."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from csi_driver import kube
from sync_controller import conditions as c
from sync_controller.api import API_VERSION, KIND, InputError, parse
from sync_controller.fetch import SpcRef
from sync_controller.grants import GRANTS, LEADER_ROLE, MANAGER_ROLE, RBAC_FILE
from sync_controller.reconcile import Failure, build_data, data_digest, owns, sync_hash
from sync_controller.tokens import TokenError, Tokens

KEY = b"k" * 32
SPC = SpcRef("ns", "spc", "uid-1/1", "azure", {})


def obj(**secret_object: Any) -> dict[str, Any]:
    secret: dict[str, Any] = {"data": [{"sourcePath": "db", "targetKey": "password"}]}
    secret.update(secret_object)
    return {
        "metadata": {"namespace": "ns", "name": " app ", "uid": "u-1", "generation": 3},
        "spec": {
            "secretProviderClassName": "spc",
            "serviceAccountName": "sa",
            "secretObject": secret,
            "forceSynchronization": "f1",
        },
    }


# ---- api.parse ----------------------------------------------------------------------------------


def test_parse_fields_and_defaults() -> None:
    sync = parse(obj(labels={"a": 1}, annotations={"b": "x"}))
    assert (sync.namespace, sync.name, sync.uid, sync.generation) == ("ns", "app", "u-1", 3)
    assert (sync.spc_name, sync.service_account, sync.force) == ("spc", "sa", "f1")
    assert sync.type == "Opaque"  # the CRD's default, also when an older CRD leaves it out
    assert [(d.source_path, d.target_key) for d in sync.data] == [("db", "password")]
    assert sync.labels == {"a": "1"} and sync.annotations == {"b": "x"}
    assert sync.key == ("ns", "app")
    assert sync.owner() == {"apiVersion": API_VERSION, "kind": KIND, "name": "app", "uid": "u-1"}


@pytest.mark.parametrize(
    ("secret_object", "reason", "text"),
    [
        (
            {"labels": {"secrets-store.sync.x-k8s.io/x": "1"}},
            "InvalidClusterSecretLabelError",
            "label secrets-store.sync.x-k8s.io/x is reserved",
        ),
        (
            {"annotations": {"secrets-store.sync.x-k8s.io": ""}},
            "InvalidClusterSecretAnnotationError",
            "annotation secrets-store.sync.x-k8s.io is reserved",
        ),
        ({"data": []}, "ControllerSyncError", "secretObject.data is empty"),
        (
            {"data": [{"sourcePath": "db", "targetKey": "a b"}]},
            "ControllerSyncError",
            "targetKey 'a b' in secretObject.data is not valid",
        ),
        (
            {"data": [{"sourcePath": "../x", "targetKey": "k"}]},
            "ControllerSyncError",
            "sourcePath '../x'",
        ),
        (
            {"data": [{"sourcePath": "db", "targetKey": "k" * 254}]},
            "ControllerSyncError",
            "targetKey",
        ),
        ({"data": [{"sourcePath": "db"}]}, "ControllerSyncError", "targetKey ''"),
    ],
)
def test_parse_refuses(secret_object: dict[str, Any], reason: str, text: str) -> None:
    with pytest.raises(InputError) as e:
        parse(obj(**secret_object))
    assert e.value.reason == reason
    assert text in e.value.message


def test_parse_accepts_the_key_forms_of_the_crd() -> None:
    for key in ("a", "tls.crt", "db-password", "ab.c_d", "name/0", "a/1/2", "A9"):
        data = [{"sourcePath": key, "targetKey": key}]
        assert parse(obj(data=data)).data[0].target_key == key


# ---- conditions --------------------------------------------------------------------------------


def test_initial_conditions_unknown() -> None:
    conds = c.initial(2)
    assert [(x["type"], x["status"], x["reason"]) for x in conds] == [
        (c.CREATE, "Unknown", c.SYNC_STARTING),
        (c.UPDATE, "Unknown", c.NO_UPDATE_YET),
    ]
    assert all(x["observedGeneration"] == 2 for x in conds)


def test_transition_time_moves_only_with_the_status() -> None:
    old = [
        {"type": c.CREATE, "status": "True", "lastTransitionTime": "2020-01-01T00:00:00Z"},
        {"type": c.UPDATE, "status": "True", "lastTransitionTime": "2020-01-01T00:00:00Z"},
    ]
    same = c.set_condition(old, c.UPDATE, "True", c.UP_TO_DATE, "m", 4)
    assert same[1]["lastTransitionTime"] == "2020-01-01T00:00:00Z"
    assert same[1]["reason"] == c.UP_TO_DATE and same[1]["observedGeneration"] == 4
    assert same[0] is old[0]  # the other condition kept as it was
    flipped = c.set_condition(old, c.UPDATE, "False", c.PROVIDER_ERROR, "m", 4)
    assert flipped[1]["lastTransitionTime"] != "2020-01-01T00:00:00Z"
    assert [x["type"] for x in flipped] == [c.CREATE, c.UPDATE]  # order kept
    assert old[1]["status"] == "True"  # a new list: the input untouched


def test_condition_message_bounded() -> None:
    conds = c.set_condition([], c.CREATE, "False", c.PROVIDER_ERROR, "x" * 100_000, 1)
    assert len(conds[0]["message"]) == c.MAX_MESSAGE


# ---- the hash, the digest ------------------------------------------------------------------------


def test_sync_hash_keyed_and_covering_what_makes_a_new_sync() -> None:
    sync = parse(obj())
    data = {"password": b"hunter2"}
    h = sync_hash(KEY, sync, SPC, data)
    assert h.startswith("v1-hmac:") and h == sync_hash(KEY, sync, SPC, dict(data))
    assert "hunter2" not in h and b"hunter2".hex() not in h
    assert sync_hash(b"x" * 32, sync, SPC, data) != h  # another process's key
    assert sync_hash(KEY, sync, SPC, {"password": b"hunter3"}) != h
    assert sync_hash(KEY, sync, SPC, {"other": b"hunter2"}) != h
    other_spc = SpcRef("ns", "spc", "uid-1/2", "azure", {})
    assert sync_hash(KEY, sync, other_spc, data) != h  # an edited SPC
    forced = parse({**obj(), "spec": {**obj()["spec"], "forceSynchronization": "f2"}})
    assert sync_hash(KEY, forced, SPC, data) != h


@given(st.dictionaries(st.text(min_size=1), st.binary(), max_size=5))
def test_sync_hash_independent_of_key_order(data: dict[str, bytes]) -> None:
    sync = parse(obj())
    reordered = dict(reversed(list(data.items())))
    assert sync_hash(KEY, sync, SPC, data) == sync_hash(KEY, sync, SPC, reordered)


def test_data_digest_tells_our_write_from_an_edit() -> None:
    ours = {"a": "MQ==", "b": "Mg=="}
    assert data_digest(KEY, ours) == data_digest(KEY, {"b": "Mg==", "a": "MQ=="})
    assert data_digest(KEY, ours) != data_digest(KEY, {**ours, "a": "Mw=="})
    assert data_digest(KEY, ours) != data_digest(b"y" * 32, ours)


# ---- the data, the owner -------------------------------------------------------------------------


def test_build_data_maps_source_paths() -> None:
    sync = parse(
        obj(data=[{"sourcePath": "db", "targetKey": "p"}, {"sourcePath": "u", "targetKey": "n"}])
    )
    assert build_data(sync, {"db": b"1", "u": b"2", "extra": b"3"}) == {"p": b"1", "n": b"2"}


def test_build_data_missing_source_path_names_the_files() -> None:
    with pytest.raises(Failure) as e:
        build_data(parse(obj()), {"other": b"1", "b": b"2"})
    assert e.value.reason == c.FETCH_FAILED
    assert (
        "sourcePath db not found" in e.value.message and "(its files: b, other)" in e.value.message
    )


def test_build_data_over_one_mebibyte() -> None:
    with pytest.raises(Failure) as e:
        build_data(parse(obj()), {"db": b"x" * ((1 << 20) + 1)})
    assert e.value.reason == c.FETCH_FAILED and "over 1 MiB" in e.value.message


def test_owns_only_alone_and_by_this_uid() -> None:
    me = [{"uid": "u-1"}]
    assert owns({"ownerReferences": [{"uid": "u-1"}]}, me)
    assert not owns({"ownerReferences": [{"uid": "u-0"}]}, me)  # an earlier SecretSync's
    assert not owns({"ownerReferences": [{"uid": "u-1"}, {"uid": "x"}]}, me)
    assert not owns({}, me)


# ---- the RBAC hints ---------------------------------------------------------------------------

DENIED = (
    'secrets "s" is forbidden: User "system:serviceaccount:kube-system:x" cannot {verb} '
    'resource "{resource}" in API group "{group}" in the namespace "ns"'
)


@pytest.fixture
def controller_grants() -> Any:
    kube.use_grants(GRANTS)
    yield
    kube.use_grants(kube.DRIVER_GRANTS)


@pytest.mark.usefixtures("controller_grants")
def test_hints_name_the_controllers_roles() -> None:
    secrets = kube.rbac_hint(DENIED.format(verb="update", resource="secrets", group=""))
    assert secrets == (
        f"check ClusterRole {MANAGER_ROLE} ({RBAC_FILE}): it must allow update on secrets and "
        "be bound to the SecretSync controller's ServiceAccount"
    )
    leases = kube.rbac_hint(
        DENIED.format(verb="get", resource="leases", group="coordination.k8s.io")
    )
    assert leases.startswith(f"check Role {LEADER_ROLE} ({RBAC_FILE}): it must allow get on leases")
    unknown = kube.rbac_hint(DENIED.format(verb="patch", resource="deployments", group="apps"))
    assert unknown == "the SecretSync controller's ServiceAccount needs patch on deployments.apps"


def test_the_drivers_hints_unchanged() -> None:
    hint = kube.rbac_hint(DENIED.format(verb="get", resource="secrets", group=""))
    assert hint == (
        f"check ClusterRole {kube.ROLE_SYNC} (daemonset/rbac.yaml): it must allow get on "
        "secrets and be bound to the driver's ServiceAccount"
    )


def test_main_usage_error_and_version(capsys: pytest.CaptureFixture[str]) -> None:
    from sync_controller.__main__ import main

    assert main(["--bogus"]) == 2
    assert "flag provided but not defined: -bogus" in capsys.readouterr().err
    assert main(["--version"]) == 0
    assert '"version"' in capsys.readouterr().out


class _TokenApi:
    """Stands in for the API server's TokenRequest: counts the requests, answers after a beat."""

    def __init__(self, fail: bool = False) -> None:
        self.requests = 0
        self.fail = fail

    async def create(self, obj: Any, name: str, namespace: str) -> Any:
        import datetime
        import types

        self.requests += 1
        await asyncio.sleep(0.01)
        if self.fail:
            raise RuntimeError(f"no serviceaccount {namespace}/{name}")
        exp = datetime.datetime(2030, 1, 1, tzinfo=datetime.UTC)
        return types.SimpleNamespace(
            status=types.SimpleNamespace(token=f"t-{self.requests}", expirationTimestamp=exp)
        )


async def test_tokens_shared_in_flight_and_cached() -> None:
    api = _TokenApi()
    tokens = Tokens(api, ("aud",))  # type: ignore[arg-type]
    got = await asyncio.gather(*(tokens.tokens_json("ns", "sa") for _ in range(20)))
    assert api.requests == 1 and len(set(got)) == 1
    assert '"aud":{"token":"t-1","expirationTimestamp":"2030-01-01T00:00:00Z"}' in got[0]
    assert await tokens.tokens_json("ns", "sa") == got[0] and api.requests == 1  # cached
    await tokens.tokens_json("ns", "other")
    assert api.requests == 2


async def test_tokens_failure_not_cached() -> None:
    api = _TokenApi(fail=True)
    tokens = Tokens(api, ("aud",))  # type: ignore[arg-type]
    for _ in range(2):
        with pytest.raises(TokenError) as e:
            await asyncio.gather(*(tokens.tokens_json("ns", "sa") for _ in range(3)))
        assert "failed to request a token for serviceaccount ns/sa" in str(e.value)
        assert "(audience aud)" in str(e.value)
    assert api.requests == 2  # one per round: shared in flight, never cached


class _Synced:
    """The one part of the reconciler the controller's queue reads: the SPC versions used."""

    def __init__(self) -> None:
        self.spc_versions: dict[tuple[str, str], str] = {}


def _obj(kind_name: str, generation: int, spc: str = "") -> dict[str, Any]:
    meta = {"namespace": "ns", "name": kind_name, "uid": f"u-{kind_name}", "generation": generation}
    return {"metadata": meta, "spec": {"secretProviderClassName": spc} if spc else {}}


async def _ran(controller: Any) -> list[tuple[str, str]]:
    """The keys the worker would sync now, in order (the queue drained by the real worker
    with `_one` recorded instead of run)."""
    ran: list[tuple[str, str]] = []

    async def one(key: tuple[str, str], _obj: Any) -> None:
        ran.append(key)

    controller._one = one
    worker = asyncio.create_task(controller._worker())
    await asyncio.sleep(0.05)
    worker.cancel()
    return ran


async def test_an_spc_event_after_its_syncs_ran_does_not_sync_them_again() -> None:
    """An SPC's first watch event may come after its SecretSyncs synced with that very SPC:
    nothing to do. A new generation of it, or another reason alongside, syncs again."""
    from sync_controller.controller import Controller, spc_version

    ctl = Controller(client=None, poll=0)  # type: ignore[arg-type]
    ctl.reconciler = _Synced()  # type: ignore[assignment]
    ctl.on_sync("ADDED", _obj("ss", 1, spc="spc"))
    assert await _ran(ctl) == [("ns", "ss")]
    spc = _obj("spc", 1)
    ctl.reconciler.spc_versions[("ns", "ss")] = spc_version(spc)  # what the sync used
    ctl.on_spc("ADDED", spc)
    assert await _ran(ctl) == []
    ctl.on_spc("MODIFIED", _obj("spc", 2))
    assert await _ran(ctl) == [("ns", "ss")]
    ctl.on_spc("MODIFIED", _obj("spc", 3))
    ctl.on_sync("MODIFIED", _obj("ss", 2, spc="spc"))  # another reason: synced whatever
    ctl.reconciler.spc_versions[("ns", "ss")] = spc_version(_obj("spc", 3))
    assert await _ran(ctl) == [("ns", "ss")]
