"""Least privilege of the SecretSync controller, proven: every verb of every rule of
daemonset/sync-controller/rbac.yaml (its ClusterRole, and the Role for the Lease) is needed by a
named behaviour of the controller, and none is missing.

Each case runs the controller as a process with a token of a ServiceAccount of its own, bound
to one ClusterRole holding the manager role's rules and, in a namespace of its own for the
Lease, one Role holding the leader-election role's rules, minus one verb of one rule (ids:
`<role>/<resource>/<verb>`). It exercises the behaviour that needs that verb and asserts that
the controller fails saying so: a condition on the SecretSync, a log line or an exit, carrying
the API server's words (`cannot <verb> resource "<resource>"`) and the role to check (and its
file). The `full` case binds every rule and runs every behaviour: all succeed, nothing is
Forbidden.

The controller watches SecretSyncs cluster-wide, so the cases run one after the other and the
session's controller is stopped meanwhile (started again after, as test_leader hands over).
The behaviour table is docs/sync-controller.md's "Least privilege".
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest
from lightkube import ApiError
from lightkube.models.authorization_v1 import ResourceAttributes, SubjectAccessReviewSpec
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.authorization_v1 import SubjectAccessReview
from lightkube.resources.coordination_v1 import Lease
from lightkube.resources.core_v1 import Event, Namespace
from lightkube.types import PatchType

from csi_driver.kube import SecretProviderClass
from sync_controller.api import SecretSync
from sync_controller.grants import LEADER_ROLE, MANAGER_ROLE, RBAC_FILE
from sync_controller.leader import LEASE_NAME
from testbed.controlplane import (
    ControlPlane,
    manifests,
    role_with_rules,
    service_account_kubeconfig,
    service_account_with_rules,
)
from testbed.mount_attributes import objects_yaml
from testbed.rbac import Grant, grants
from testbed.secretsync import spc_body
from testbed.sync_controller import SyncControllerProcess

from .conftest import AUDIENCE, CLIENT, NAMESPACE, VAULT, World, condition, decoded, until

pytestmark = pytest.mark.peers

WITHIN = 15.0  # seconds for what must happen
ABSENT = 2.0  # seconds to show that what must not happen does not (watches are ~ms)
GRANTS = grants(manifests("sync-controller/rbac.yaml"))
_names = itertools.count()


def unique(prefix: str) -> str:
    return f"lp{next(_names)}-{prefix}"


# ---- one case: a ServiceAccount, its roles, a controller --------------------------------------


@dataclass
class Case:
    world: World
    name: str
    lease_ns: str
    dropped: Grant | None
    controller: SyncControllerProcess
    syncs: list[str]

    # -- objects

    async def spc(self, objects: dict[str, str]) -> str:
        """An SPC of emulator secrets, `alias: objectName`."""
        name = unique("spc")
        await self.world.admin.create(SecretProviderClass.from_dict(_spc_body(name, objects)))
        return name

    async def secretsync(self, spc: str, key: str) -> str:
        name = unique("ss")
        await self.world.secretsync(name, spc, {key: "v"})
        self.syncs.append(name)
        return name

    async def value(self, name: str) -> str | None:
        secret = await self.world.secret(name)
        return None if secret is None else decoded(secret).get("v")

    async def synced(self, value: str) -> tuple[str, str]:
        """A SecretSync of a fresh emulator secret holding `value`, synced (the full role)."""
        secret = unique("kv")
        self.world.emulator.set_secret(VAULT, secret, value)
        spc = await self.spc({"s": secret})
        name = await self.secretsync(spc, "s")

        async def there() -> bool:
            return await self.value(name) == value

        await until(there, within=WITHIN, what=f"the Secret of {name}")
        return secret, name

    # -- what the controller says

    async def failed(self, name: str, kind: str, reason: str, *texts: str) -> str:
        async def check() -> str:
            c = condition(await self.world.get_sync(name), kind)
            ok = c.get("status") == "False" and c.get("reason") == reason
            return str(c["message"]) if ok and all(t in c["message"] for t in texts) else ""

        message: str = await until(check, within=WITHIN, what=f"{kind} False {reason} {texts}")
        return message

    async def log_line(self, *texts: str) -> str:
        async def check() -> str:
            for line in self.controller.text().splitlines():
                if all(t in line for t in texts):
                    return line
            return ""

        line: str = await until(check, within=WITHIN, what=f"a controller log line with {texts}")
        return line

    def hint(self, g: Grant) -> tuple[str, ...]:
        """What a denial of `g` must carry: the API server's words, the role and its file."""
        kind = "Role" if g.namespace else "ClusterRole"
        return (g.denied_text, f"check {kind} {g.role} ({RBAC_FILE})")

    async def denied_condition(self, name: str, reason: str, g: Grant) -> None:
        await self.failed(name, "SecretCreated", reason, *self.hint(g))

    async def denied_log(self, g: Grant, *texts: str) -> None:
        await self.log_line(*texts, *self.hint(g))

    async def never(self, check: Callable[[], Awaitable[bool]], what: str) -> None:
        deadline = time.monotonic() + ABSENT
        while time.monotonic() < deadline:
            assert not await check(), f"{what} without {self.dropped and self.dropped.id}"
            await asyncio.sleep(0.1)


def _spc_body(name: str, objects: dict[str, str]) -> dict[str, Any]:
    items = (
        {"objectName": o, "objectAlias": a, "objectType": "secret"} for a, o in objects.items()
    )
    return spc_body(name, NAMESPACE, vault=VAULT, client_id=CLIENT, objects=objects_yaml(*items))


# ---- the behaviours ----------------------------------------------------------------------------
# `g` None: everything is granted and the behaviour must succeed; else `g` is the denied grant
# and the behaviour must fail saying so.

Behaviour = Callable[[Case, Grant | None], Awaitable[None]]


async def created(c: Case, g: Grant | None) -> None:
    """A new SecretSync: watched, its token requested, its Secret read (absent) and created,
    its status patched."""
    secret = unique("kv")
    c.world.emulator.set_secret(VAULT, secret, "created")
    spc = await c.spc({"s": secret})
    name = await c.secretsync(spc, "s")
    if g is None or g.resource == "secretsyncs/status":

        async def there() -> bool:
            return await c.value(name) == "created"

        await until(there, within=WITHIN, what="the Secret")
    if g is None:

        async def status() -> bool:
            cond = condition(await c.world.get_sync(name), "SecretCreated")
            return cond.get("reason") == "CreateSuccessful"

        await until(status, within=WITHIN, what="SecretCreated True")
        return
    if g.resource == "secretsyncs":
        await c.denied_log(g, "secretsync watch interrupted")
        await c.never(lambda: _exists(c, name), "a Secret")
    elif g.resource == "secretsyncs/status":
        await c.denied_log(g, f"secretsync {NAMESPACE}/{name}: status not written")
        assert "status" not in await c.world.get_sync(name)
    elif g.resource == "serviceaccounts/token":
        await c.denied_condition(name, "ControllerSyncError", g)
    else:  # secrets get, create
        await c.denied_condition(name, "ControllerPatchError", g)
        assert await c.world.secret(name) is None


async def _exists(c: Case, name: str) -> bool:
    return await c.world.secret(name) is not None


async def spc_missing(c: Case, g: Grant | None) -> None:
    """An SPC the watch has not brought (just created, or absent) is read with get: the API
    server's not-found; without get, the Forbidden."""
    name = await c.secretsync(unique("nospc"), "s")
    if g is None:
        await c.failed(name, "SecretCreated", "SecretProviderClassMisconfigured", "not found")
    else:
        await c.denied_condition(name, "SecretProviderClassMisconfigured", g)


async def warning_event(c: Case, g: Grant | None) -> None:
    """A failure is a Warning event on the SecretSync."""
    name = await c.secretsync(unique("nospc"), "s")
    if g is None:

        async def event() -> bool:
            events = [
                e
                async for e in c.world.admin.list(
                    Event, namespace=NAMESPACE, fields={"involvedObject.name": name}
                )
            ]
            return any(
                e.type == "Warning" and e.reason == "SecretProviderClassMisconfigured"
                for e in events
            )

        await until(event, within=WITHIN, what="the Warning event")
    else:
        await c.denied_log(g, f"secretsync: could not record event on {NAMESPACE}/{name}")


async def spc_edit(c: Case, g: Grant | None) -> None:
    """An edited SPC syncs its SecretSyncs again at once (the poll is an hour)."""
    other = unique("kv")
    c.world.emulator.set_secret(VAULT, other, "after-edit")
    _, name = await c.synced("before-edit")
    spc = (await c.world.get_sync(name))["spec"]["secretProviderClassName"]
    body = _spc_body(spc, {"s": other})
    await c.world.admin.patch(
        SecretProviderClass,
        spc,
        {"spec": body["spec"]},
        namespace=NAMESPACE,
        patch_type=PatchType.MERGE,
    )

    async def edited() -> bool:
        return await c.value(name) == "after-edit"

    await _followed(c, g, edited, "the SPC edit followed", "secretproviderclass")


async def edit_undone(c: Case, g: Grant | None) -> None:
    """A Secret edited by someone else is put back at once (the poll is an hour)."""
    _, name = await c.synced("ours")
    secret = await c.world.secret(name)
    assert secret is not None
    secret.data = {"v": base64.b64encode(b"edited").decode()}
    await c.world.admin.replace(secret)

    async def undone() -> bool:
        return await c.value(name) == "ours"

    await _followed(c, g, undone, "the edit undone", "secret")


async def _followed(
    c: Case, g: Grant | None, check: Callable[[], Awaitable[bool]], what: str, watched: str
) -> None:
    """`check` comes true at once through the watch of `watched`; without the grant the
    watch says why it is down, and `check` stays false."""
    if g is None:
        await until(check, within=WITHIN, what=what)
        return
    await c.denied_log(g, f"{watched} watch interrupted")
    await c.never(check, what)


async def forced_update(c: Case, g: Grant | None) -> None:
    """A changed value, synced by forceSynchronization: the Secret is updated."""
    secret, name = await c.synced("one")
    c.world.emulator.set_secret(VAULT, secret, "two")
    await c.world.admin.patch(
        SecretSync,
        name,
        {"spec": {"forceSynchronization": "now"}},
        namespace=NAMESPACE,
        patch_type=PatchType.MERGE,
    )

    async def updated() -> bool:
        return await c.value(name) == "two"

    if g is None:
        await until(updated, within=WITHIN, what="the forced update")
        return
    await c.failed(name, "SecretUpdated", "ControllerPatchError", *c.hint(g))
    assert await c.value(name) == "one"


async def _holder(c: Case) -> str:
    try:
        lease = await c.world.admin.get(Lease, LEASE_NAME, namespace=c.lease_ns)
    except ApiError:
        return ""
    return str((lease.spec.holderIdentity if lease.spec else "") or "")


async def leads(c: Case, g: Grant | None) -> None:
    """Leader election: the Lease read, created (a fresh namespace), renewed past the renew
    deadline (2 s) and released on shutdown; only the leader syncs."""
    if g is None:
        await until(lambda: _holder(c), within=WITHIN, what="the Lease taken")
        await asyncio.sleep(3)  # past the renew deadline: renewed
        assert c.controller.proc is not None and c.controller.proc.poll() is None
        return
    verb = {"get": "lease not acquired", "create": "lease not acquired"}
    await c.denied_log(g, verb.get(g.verb, "lease renewal failed"))
    if g.verb == "update":  # it led (create) until it had to renew: then it stops, exit 1
        assert c.controller.proc is not None
        assert await asyncio.to_thread(c.controller.proc.wait, WITHIN) == 1
        assert "leader election lost" in c.controller.text()
        return
    name = await c.secretsync(unique("nospc"), "s")
    await c.never(lambda: _has_status(c, name), "a status from a controller that does not lead")


async def _has_status(c: Case, name: str) -> bool:
    return "status" in await c.world.get_sync(name)


# Which behaviour needs which grant: (role, resource, verb) → behaviour.
NEEDS: dict[tuple[str, str, str], Behaviour] = {
    (MANAGER_ROLE, "secretsyncs", "watch"): created,
    (MANAGER_ROLE, "secretsyncs/status", "patch"): created,
    (MANAGER_ROLE, "secretproviderclasses", "get"): spc_missing,
    (MANAGER_ROLE, "secretproviderclasses", "watch"): spc_edit,
    (MANAGER_ROLE, "secrets", "get"): created,
    (MANAGER_ROLE, "secrets", "create"): created,
    (MANAGER_ROLE, "secrets", "update"): forced_update,
    (MANAGER_ROLE, "secrets", "watch"): edit_undone,
    (MANAGER_ROLE, "serviceaccounts/token", "create"): created,
    (MANAGER_ROLE, "events", "create"): warning_event,
    (LEADER_ROLE, "leases", "get"): leads,
    (LEADER_ROLE, "leases", "create"): leads,
    (LEADER_ROLE, "leases", "update"): leads,
}
ALL = [leads, created, spc_missing, warning_event, spc_edit, edit_undone, forced_update]


def test_every_grant_is_needed_by_a_named_behaviour() -> None:
    """rbac.yaml and the table agree both ways: a verb no behaviour needs is a finding."""
    granted = {(g.role, g.resource, g.verb) for g in GRANTS}
    unneeded = sorted(granted - set(NEEDS))
    assert not unneeded, f"no behaviour of the controller needs {unneeded}: drop them"
    missing = sorted(set(NEEDS) - granted)
    assert not missing, f"behaviours need {missing}, which {RBAC_FILE} does not grant"
    assert set(NEEDS.values()) == set(ALL)


# Each resource's API group, and the role kind that may grant it (no resourceNames anywhere).
SCOPE = {
    "secretsyncs": ("secret-sync.x-k8s.io", False),
    "secretsyncs/status": ("secret-sync.x-k8s.io", False),
    "secretproviderclasses": ("secrets-store.csi.x-k8s.io", False),
    "secrets": ("", False),
    "serviceaccounts/token": ("", False),
    "events": ("", False),
    "leases": ("coordination.k8s.io", True),  # a Role in the controller's namespace only
}


def test_every_grant_is_no_broader_than_needed() -> None:
    for g in GRANTS:
        assert "*" not in (g.group, g.resource, g.verb, *g.names), f"{g.id}: a wildcard"
        assert not g.names, f"{g.id}: resourceNames"
        assert (g.group, bool(g.namespace)) == SCOPE[g.resource], g.id


# ---- the cases, one after the other -------------------------------------------------------------

CASES: list[Grant | None] = [*GRANTS, None]


@pytest.fixture(scope="module")
async def quiet(world: World) -> AsyncIterator[World]:
    """The session's controller stopped while the cases run (it would sync their SecretSyncs),
    a fresh one after."""
    world.controller.stop()
    yield world
    world.controller = world.controller.again(world.root / "after-least-privilege.log").start()


async def _bind(world: World, name: str, lease_ns: str, dropped: Grant | None) -> None:
    bound = [g for g in GRANTS if g != dropped]
    await service_account_with_rules(
        world.admin, name, [g.rule() for g in bound if not g.namespace]
    )
    await world.admin.create(Namespace(metadata=ObjectMeta(name=lease_ns)))
    await role_with_rules(world.admin, name, lease_ns, [g.rule() for g in bound if g.namespace])
    probe = next(g for g in bound if g.namespace)
    review = SubjectAccessReview(
        spec=SubjectAccessReviewSpec(
            user=f"system:serviceaccount:kube-system:{name}",
            groups=["system:serviceaccounts", "system:authenticated"],
            resourceAttributes=ResourceAttributes(
                verb=probe.verb, group=probe.group, resource=probe.resource, namespace=lease_ns
            ),
        )
    )

    async def allowed() -> bool:
        answer = await world.admin.create(review)
        return bool(answer.status is not None and answer.status.allowed)

    await until(allowed, within=WITHIN, what=f"RBAC for {name} in effect")


@contextlib.asynccontextmanager
async def case(
    world: World, cp: ControlPlane, i: int, dropped: Grant | None
) -> AsyncIterator[Case]:
    name, lease_ns = f"lp-sync-{i}", f"lp-sync-lease-{i}"
    await _bind(world, name, lease_ns, dropped)
    kubeconfig = await service_account_kubeconfig(
        cp, world.admin, "kube-system", name, world.root / f"{name}.kubeconfig"
    )
    controller = SyncControllerProcess(
        kubeconfig,
        world.provider.socket.parent,
        world.root / f"{name}.log",
        f"--token-request-audience={AUDIENCE}",
        "--rotation-poll-interval=1h",
        "--leader-elect",
        f"--leader-election-namespace={lease_ns}",
        "--leader-election-lease-duration=3s",
        "--leader-election-renew-deadline=2s",
        "--leader-election-retry-period=0.5s",
    ).start()
    c = Case(world, name, lease_ns, dropped, controller, [])
    try:
        yield c
    finally:
        controller.stop()
        for s in c.syncs:
            with contextlib.suppress(ApiError):
                await world.admin.delete(SecretSync, s, namespace=NAMESPACE)
        with contextlib.suppress(ApiError):
            await world.admin.delete(Namespace, lease_ns)


@pytest.mark.parametrize("i", range(len(CASES)), ids=[g.id if g else "full" for g in CASES])
async def test_least_privilege(i: int, quiet: World, control_plane: ControlPlane) -> None:
    dropped = CASES[i]
    async with case(quiet, control_plane, i, dropped) as c:
        if dropped is None:
            for b in ALL:
                await b(c, None)
            logs = c.controller.text()
            assert "forbidden" not in logs.lower(), logs
            assert c.controller.stop() == 0  # the Lease released on the way out
            assert await _holder(c) == ""
        else:
            await NEEDS[(dropped.role, dropped.resource, dropped.verb)](c, dropped)
