"""Kubernetes access: the client, the CRD resource types, and a cached watch of SPCs.

The driver must serve CSI even with no API server configured or reachable (csi-sanity runs
it so); everything here fails with KubeError in that case and publishes report it.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import httpx2
from lightkube import ApiError, AsyncClient, KubeConfig
from lightkube.generic_resource import create_namespaced_resource
from lightkube.models.authorization_v1 import ResourceAttributes, SelfSubjectAccessReviewSpec
from lightkube.resources.authorization_v1 import SelfSubjectAccessReview

from .errors import SPC_NOT_FOUND, KubeError, LabelledError, spc_unavailable

log = logging.getLogger(__name__)

GROUP = "secrets-store.csi.x-k8s.io"
NODE_LABEL = "internal.secrets-store.csi.k8s.io/node-name"

SecretProviderClass = create_namespaced_resource(
    GROUP, "v1", "SecretProviderClass", "secretproviderclasses"
)
SecretProviderClassV1alpha1 = create_namespaced_resource(
    GROUP, "v1alpha1", "SecretProviderClass", "secretproviderclasses"
)
SecretProviderClassPodStatus = create_namespaced_resource(
    GROUP, "v1", "SecretProviderClassPodStatus", "secretproviderclasspodstatuses"
)


@dataclass(frozen=True)
class SecretProviderClassSpec:
    namespace: str
    name: str
    provider: str
    parameters: Mapping[str, str]
    annotations: Mapping[str, str] = field(default_factory=dict)


class SpcSource(Protocol):
    """Where publishes and rotation read SecretProviderClasses: SpcCache (the API server) or,
    in standalone mode, a manifest file (csi_driver.standalone.FileSpcSource)."""

    async def get(self, namespace: str, name: str) -> SecretProviderClassSpec: ...


E = TypeVar("E", bound=LabelledError)


async def get_spc(
    spcs: SpcSource, namespace: str, name: str, error: type[E]
) -> SecretProviderClassSpec:
    """The SPC of a mount; a failed read raised as `error` (SecretProviderClassNotFound)."""
    try:
        return await spcs.get(namespace, name)
    except KubeError as e:
        raise error(spc_unavailable(namespace, name, e), SPC_NOT_FOUND) from None


def make_client(kubeconfig: str) -> AsyncClient | None:
    """A client from --kubeconfig, else in-cluster or $KUBECONFIG; None when there is none."""
    try:
        config = KubeConfig.from_file(kubeconfig) if kubeconfig else KubeConfig.from_env()
    except Exception as e:
        log.warning("no Kubernetes configuration (%s); publishes will fail until configured", e)
        return None
    return AsyncClient(config=config, field_manager="secrets-store-csi-driver")


# The ClusterRoles of daemonset/rbac.yaml (docs/rbac.md): which one grants what.
ROLE_BASE = "secretproviderclasses-role"
ROLE_SYNC = "secretprovidersyncing-role"
ROLE_ROTATION = "secretproviderrotation-role"
ROLE_TOKEN = "secretprovidertokenrequest-role"
# only where the startup taint is on (daemonset/rbac-startup-taint.yaml, chart startupTaint)
ROLE_TAINT = "secretproviderstartuptaint-role"


@dataclass(frozen=True)
class Grants:
    """Which role (and file) grants each resource to one program, for the hint a Forbidden
    carries: the driver's, or the SecretSync controller's (it sets its own at start)."""

    who: str  # "the driver": the subject of "… cannot <verb> resource …"
    roles: Mapping[tuple[str, str], str]  # (API group, resource) → role name
    files: Mapping[str, str]  # role name → the file that holds it
    default_file: str
    kinds: Mapping[str, str] = field(default_factory=dict)  # role → "Role" (else ClusterRole)

    def file(self, role: str) -> str:
        return self.files.get(role, self.default_file)


DRIVER_GRANTS = Grants(
    "the driver",
    {
        ("", "events"): ROLE_BASE,
        ("", "pods"): ROLE_BASE,
        (GROUP, "secretproviderclasses"): ROLE_BASE,
        (GROUP, "secretproviderclasspodstatuses"): ROLE_BASE,
        ("storage.k8s.io", "csidrivers"): ROLE_BASE,
        ("", "secrets"): ROLE_SYNC,
        ("", "serviceaccounts/token"): ROLE_TOKEN,
        ("", "nodes"): ROLE_TAINT,
        ("storage.k8s.io", "csinodes"): ROLE_TAINT,
    },
    {ROLE_TAINT: "daemonset/rbac-startup-taint.yaml"},
    "daemonset/rbac.yaml",
)
_grants = [DRIVER_GRANTS]


def use_grants(grants: Grants) -> None:
    """This process is another program than the driver (its RBAC hints name its roles)."""
    _grants[0] = grants


# The API server's Forbidden text: `... cannot get resource "pods" in API group "" in ...`
_DENIED = re.compile(r'cannot (\w+) resource "([^"]+)" in API group "([^"]*)"')


def is_forbidden(e: BaseException) -> bool:
    if isinstance(e, ApiError):
        return e.status.code == 403
    return isinstance(e, httpx2.HTTPStatusError) and e.response.status_code == 403


_VERBS = {"GET": "get", "POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}


def denied_request_text(request: httpx2.Request) -> str:
    """A 403 whose body was not read (a watch: lightkube raises before reading the stream),
    said in the API server's words from the request itself."""
    url = request.url
    parts = [p for p in url.path.split("/") if p]
    group, rest = "", parts[2:]
    if parts[:1] == ["apis"]:
        group, rest = (parts[1] if len(parts) > 1 else ""), parts[3:]
    namespace = ""
    if len(rest) > 2 and rest[0] == "namespaces":
        namespace, rest = rest[1], rest[2:]
    resource = rest[0] if rest else url.path
    if len(rest) > 2:
        resource += "/" + rest[2]
    if url.params.get("watch") in ("true", "1"):
        verb = "watch"
    elif request.method == "GET" and len(rest) < 2:
        verb = "list"
    else:
        verb = _VERBS.get(request.method, request.method.lower())
    scope = f'in the namespace "{namespace}"' if namespace else "at the cluster scope"
    return (
        f'{resource} is forbidden (HTTP 403): {_grants[0].who} cannot {verb} resource "{resource}" '
        f'in API group "{group}" {scope}'
    )


def rbac_hint(message: str, role: str | None = None) -> str:
    """What to grant for a Forbidden message: the verb, the resource and the ClusterRole that
    holds it (and its file under daemonset/); "" when the message is not an RBAC denial."""
    m = _DENIED.search(message)
    if m is None:
        return ""
    verb, resource, group = m.groups()
    grants = _grants[0]
    role = role or grants.roles.get((group, resource))
    where = f"{resource}.{group}" if group else resource
    account = f"{grants.who}'s ServiceAccount"
    if role is None:
        return f"{account} needs {verb} on {where}"
    return (
        f"check {grants.kinds.get(role, 'ClusterRole')} {role} ({grants.file(role)}): it must "
        f"allow {verb} on {where} and be bound to {account}"
    )


def api_error_text(e: BaseException, role: str | None = None) -> str:
    """Like apimachinery's error strings (`secretproviderclasses... "x" not found`); a
    Forbidden one gets the RBAC hint (`role`: the ClusterRole to name when the resource
    alone does not tell, e.g. secrets read for rotation)."""
    if isinstance(e, ApiError):
        text = str(e.status.message or e)
        if e.status.code == 403:
            hint = rbac_hint(text, role)
            if hint:
                text = f"{text}; {hint}"
        return text
    if is_forbidden(e):
        assert isinstance(e, httpx2.HTTPStatusError)
        text = denied_request_text(e.request)
        hint = rbac_hint(text, role)
        return f"{text}; {hint}" if hint else text
    return f"{type(e).__name__}: {e}" if str(e) else type(e).__name__


async def missing_verbs(client: AsyncClient, resource: str, verbs: Sequence[str]) -> list[str]:
    """The verbs on `resource` the driver's own RBAC lacks (one self-review per verb; a review
    that cannot be made counts as allowed: the real call will say)."""

    async def allowed(verb: str) -> bool:
        review = SelfSubjectAccessReview(
            spec=SelfSubjectAccessReviewSpec(
                resourceAttributes=ResourceAttributes(verb=verb, resource=resource)
            )
        )
        try:
            result = await client.create(review)
        except Exception as e:
            log.warning("cannot review the driver's RBAC: %s", api_error_text(e))
            return True
        return bool(result.status is not None and result.status.allowed)

    answers = await asyncio.gather(*(allowed(v) for v in verbs))
    return [v for v, ok in zip(verbs, answers, strict=True) if not ok]


def to_dict(obj: Any) -> dict[str, Any]:
    """A lightkube object (model or generic resource) as the API server's JSON."""
    data: dict[str, Any] = obj.to_dict() if hasattr(obj, "to_dict") else dict(obj)
    return data


async def watch_forever(
    client: AsyncClient,
    resource: Any,
    handle: Callable[[str, dict[str, Any]], None],
    *,
    what: str,
    on_start: Callable[[], None] | None = None,
    on_error: Callable[[BaseException, str], None] | None = None,
    blip_level: int = logging.WARNING,
    describe: Callable[[BaseException], str] | None = None,
    **selectors: Any,
) -> None:
    """Watch `resource` across namespaces forever, re-watching with backoff (0.5 s doubling to
    30 s, reset by the next event). `on_start` runs before every (re)watch, `on_error` with
    the error and its text. A Forbidden is an operator's error to fix, not a blip: logged as
    an error; other interruptions at `blip_level`. `describe` says an error in the caller's
    words (another component's role to check); api_error_text by default."""
    delay = 0.5
    while True:
        try:
            if on_start is not None:
                on_start()
            async for event, obj in client.watch(resource, namespace="*", **selectors):
                handle(event, to_dict(obj))
                delay = 0.5
        except asyncio.CancelledError:
            raise
        except Exception as e:
            text = (describe or api_error_text)(e)
            if on_error is not None:
                on_error(e, text)
            log.log(
                logging.ERROR if is_forbidden(e) else blip_level,
                "%s watch interrupted (%s); retrying in %.1fs",
                what,
                text,
                delay,
            )
            await asyncio.sleep(delay)
            delay = min(delay * 2, 30.0)


class SpcCache:
    """SecretProviderClasses from a watch across namespaces; a miss falls back to a GET.

    The watch is on v1; objects written as v1alpha1 are the same stored objects and show up
    in it too (the versions differ only in name). A cache miss (just created, watch lagging,
    or no watch permission) reads the API directly, v1 first, then v1alpha1.
    """

    def __init__(self, client: AsyncClient | None) -> None:
        self._client = client
        self._items: dict[tuple[str, str], dict[str, Any]] = {}
        self._task: asyncio.Task[None] | None = None
        self.synced = False

    def start(self) -> None:
        if self._client is not None and self._task is None:
            self._task = asyncio.create_task(self._run(), name="spc-watch")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _run(self) -> None:
        assert self._client is not None
        # a Forbidden watch leaves publishes working through GETs, without the cache
        await watch_forever(
            self._client,
            SecretProviderClass,
            self._on_event,
            what="secretproviderclass",
            on_start=self._items.clear,
            on_error=self._on_error,
            blip_level=logging.INFO,
        )

    def _on_event(self, event: str, data: dict[str, Any]) -> None:
        meta = data.get("metadata", {})
        key = (meta.get("namespace", ""), meta.get("name", ""))
        if event == "DELETED":
            self._items.pop(key, None)
        else:
            self._items[key] = data
        self.synced = True

    def _on_error(self, e: BaseException, text: str) -> None:
        self.synced = False

    async def get(self, namespace: str, name: str) -> SecretProviderClassSpec:
        data = self._items.get((namespace, name))
        if data is None:
            data = await self._fetch(namespace, name)
        spec = data.get("spec") or {}
        params = spec.get("parameters") or {}
        annotations = (data.get("metadata") or {}).get("annotations") or {}
        return SecretProviderClassSpec(
            namespace=namespace,
            name=name,
            provider=str(spec.get("provider") or ""),
            parameters={str(k): str(v) for k, v in params.items()},
            annotations={str(k): str(v) for k, v in annotations.items()},
        )

    async def _fetch(self, namespace: str, name: str) -> dict[str, Any]:
        if self._client is None:
            raise KubeError("no Kubernetes API configured (in-cluster config or --kubeconfig)")
        try:
            obj = await self._client.get(SecretProviderClass, name, namespace=namespace)
        except ApiError as e:
            if e.status.code != 404 or e.status.reason != "NotFound" or e.status.details is None:
                raise KubeError(api_error_text(e)) from None
            # 404 for the object, or v1 not served: try v1alpha1 before giving up
            try:
                obj = await self._client.get(SecretProviderClassV1alpha1, name, namespace=namespace)
            except ApiError:
                raise KubeError(api_error_text(e)) from None
            except Exception as e2:
                raise KubeError(api_error_text(e2)) from None
        except Exception as e:
            raise KubeError(api_error_text(e)) from None
        return to_dict(obj)
