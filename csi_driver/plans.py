"""Rotation plans: what one mounted volume's refresh sends to its provider, and where plans
come from. The Reconciler (rotation.py) is given a PlanSource: KubePlans here (the pod, its SPC,
fresh service-account tokens and nodePublishSecretRef data from the API server), or
standalone's file plans (csi_driver.standalone.FilePlans)."""

from __future__ import annotations

import base64
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from lightkube import AsyncClient
from lightkube.resources.core_v1 import Pod, Secret

from . import DRIVER_NAME
from .errors import (
    POD_LIST_FAILED,
    POD_VOLUME_NOT_FOUND,
    SECRET_REF_NOT_FOUND,
    TOKEN_REQUEST_FAILED,
    KubeError,
    RotationError,
)
from .kube import ROLE_ROTATION, SpcSource, api_error_text, get_spc
from .sharing import ShareKey, share_key
from .spcps import PodStatusRecord
from .tokens import TokenSettings, pod_tokens, token_settings
from .volumes import (
    POD_SA_NAME,
    POD_UID,
    SA_TOKENS,
    build_mount_request,
    csi_volume,
    parse_target,
    pod_context,
    pod_finished,
)

log = logging.getLogger(__name__)

FORCE_ANNOTATION = "secrets-store.csi.k8s.io/force-refresh"


@dataclass
class Plan:
    record: PodStatusRecord
    provider: str
    spc_parameters: Mapping[str, str]
    volume_context: dict[str, str]
    secrets: dict[str, str] = field(repr=False)
    service_account: str
    secret_ref: str
    forced: bool = False
    force_token: str = ""  # the pod's force-refresh annotation (the schedule decides `forced`)
    pod_uid: str = ""  # the live pod's uid, for events ("" → the record's)

    @property
    def target(self) -> str:
        return self.record.target_path

    def share_key(self) -> ShareKey | None:
        """Mounts with equal keys may share one provider call (sharing.py says why that is
        safe); a forced refresh calls alone."""
        if self.forced:
            return None
        return share_key(
            namespace=self.record.namespace,
            spc_name=self.record.spc_name,
            provider=self.provider,
            parameters=self.spc_parameters,
            volume_context=self.volume_context,
            secrets=self.secrets,
            service_account=self.service_account,
        )


@dataclass(frozen=True)
class Failed:
    """A due volume that could not be planned."""

    record: PodStatusRecord
    error: RotationError
    pod_uid: str = ""


@dataclass
class Batch:
    """One tick's plans; volumes neither planned nor failed are skipped quietly."""

    plans: list[Plan] = field(default_factory=list)
    failed: list[Failed] = field(default_factory=list)
    complete: bool = True  # False: the source could not look (no API, pod list failed)


class PlanSource(Protocol):
    async def plans(self, due: Sequence[PodStatusRecord]) -> Batch:
        """Plans for the due volumes of one tick."""
        ...

    async def prepare(self) -> None:
        """Once per tick before any provider call (raises RotationError: every plan fails)."""
        ...

    async def request(self, plan: Plan) -> tuple[str, str]:
        """The provider's attributes and secrets JSON (raises RotationError)."""
        ...


def plain_request(plan: Plan) -> tuple[str, str]:
    return build_mount_request(plan.spc_parameters, plan.volume_context, plan.secrets)


class KubePlans:
    """Plans from the API server: this node's live pods, their SPCs and secrets."""

    def __init__(
        self,
        client: AsyncClient | None,
        spcs: SpcSource,
        node_id: str,
        driver_name: str = DRIVER_NAME,
    ) -> None:
        self.client = client
        self.spcs = spcs
        self.node_id = node_id
        self.driver_name = driver_name
        self._settings: TokenSettings | None = None

    async def plans(self, due: Sequence[PodStatusRecord]) -> Batch:
        if self.client is None:
            log.warning("rotation: no Kubernetes API configured; skipping")
            return Batch(complete=False)
        try:
            pods = await self._pods(self.client)
        except KubeError as e:
            log.warning("rotation: could not list pods on node %s: %s", self.node_id, e)
            failed = [Failed(r, RotationError(str(e), POD_LIST_FAILED)) for r in due]
            return Batch(failed=failed, complete=False)
        batch = Batch()
        secret_cache: dict[tuple[str, str], dict[str, str] | RotationError] = {}
        for record in due:
            pod = pods.get((record.namespace, record.pod_name))
            if pod is None or not self.live(pod, record):
                continue
            uid = pod.metadata.uid if pod.metadata is not None else None
            try:
                batch.plans.append(await self._plan(self.client, record, pod, secret_cache))
            except RotationError as e:
                batch.failed.append(Failed(record, e, uid or ""))
        return batch

    async def prepare(self) -> None:
        assert self.client is not None
        try:
            self._settings = await token_settings(self.client, self.driver_name)
        except KubeError as e:
            raise RotationError(str(e), TOKEN_REQUEST_FAILED) from None

    async def request(self, plan: Plan) -> tuple[str, str]:
        """Fresh tokens for the plan's pod, as kubelet makes them for a publish."""
        context = dict(plan.volume_context)
        secrets = dict(plan.secrets)
        settings = self._settings
        if settings is not None and settings.audiences:
            assert self.client is not None
            try:
                tokens = await pod_tokens(
                    self.client,
                    settings,
                    namespace=plan.record.namespace,
                    pod_name=plan.record.pod_name,
                    pod_uid=context[POD_UID],
                    service_account=plan.service_account,
                )
            except KubeError as e:
                raise RotationError(str(e), TOKEN_REQUEST_FAILED) from None
            if tokens:
                (secrets if settings.in_secrets else context)[SA_TOKENS] = tokens
        return build_mount_request(plan.spc_parameters, context, secrets)

    async def _pods(self, client: AsyncClient) -> dict[tuple[str, str], Pod]:
        out: dict[tuple[str, str], Pod] = {}
        try:
            async for pod in client.list(
                Pod, namespace="*", fields={"spec.nodeName": self.node_id}
            ):
                if pod.metadata is not None:
                    out[(pod.metadata.namespace or "", pod.metadata.name or "")] = pod
        except Exception as e:
            raise KubeError(api_error_text(e)) from None
        return out

    def live(self, pod: Pod | None, record: PodStatusRecord) -> bool:
        """Gone, replaced, terminating, finished or elsewhere: skip quietly."""
        if pod is None or pod.metadata is None or pod.spec is None:
            log.debug("rotation: pod %s/%s gone, skipping", record.namespace, record.pod_name)
            return False
        if record.pod_uid and pod.metadata.uid != record.pod_uid:
            return False
        if pod_finished(pod):
            return False
        return bool(pod.spec.nodeName == self.node_id)

    async def _plan(
        self,
        client: AsyncClient,
        record: PodStatusRecord,
        pod: Pod,
        secret_cache: dict[tuple[str, str], dict[str, str] | RotationError],
    ) -> Plan:
        assert pod.metadata is not None and pod.spec is not None
        ns = record.namespace
        volume = csi_volume(
            pod, record.spc_name, parse_target(record.target_path).volume, self.driver_name
        )
        if volume is None or volume.csi is None:
            raise RotationError(
                f"could not find secret provider class pod status volume for pod "
                f"{ns}/{record.pod_name}",
                POD_VOLUME_NOT_FOUND,
            )
        spc = await get_spc(self.spcs, ns, record.spc_name, RotationError)
        sa = pod.spec.serviceAccountName or "default"
        context = dict(volume.csi.volumeAttributes or {})
        context.update(pod_context(pod.metadata.name or "", ns, pod.metadata.uid or "", sa))
        ref = volume.csi.nodePublishSecretRef
        ref_name = ref.name if ref is not None and ref.name else ""
        secrets: dict[str, str] = {}
        if ref_name:
            cached = secret_cache.get((ns, ref_name))
            if cached is None:
                cached = secret_cache[(ns, ref_name)] = await _secret_data(client, ns, ref_name)
            if isinstance(cached, RotationError):
                raise cached
            secrets = dict(cached)
        return Plan(
            record=record,
            provider=spc.provider,
            spc_parameters=spc.parameters,
            volume_context=context,
            secrets=secrets,
            service_account=sa,
            secret_ref=ref_name,
            force_token=(pod.metadata.annotations or {}).get(FORCE_ANNOTATION, ""),
            pod_uid=pod.metadata.uid or "",
        )


async def _secret_data(client: AsyncClient, ns: str, name: str) -> dict[str, str] | RotationError:
    """A nodePublishSecretRef's data, read once per tick however many pods use it."""
    try:
        secret = await client.get(Secret, name, namespace=ns)
    except Exception as e:
        return RotationError(
            f"failed to get node publish secret {ns}/{name}, err: "
            f"{api_error_text(e, ROLE_ROTATION)}",
            SECRET_REF_NOT_FOUND,
        )
    return {
        k: base64.b64decode(v).decode("utf-8", "replace") for k, v in (secret.data or {}).items()
    }


def republish_plan(
    record: PodStatusRecord,
    provider: str,
    parameters: Mapping[str, str],
    req_context: Mapping[str, str],
    req_secrets: Mapping[str, str],
) -> Plan:
    """A kubelet republish brings its own context and secrets (tokens included)."""
    return Plan(
        record=record,
        provider=provider,
        spc_parameters=parameters,
        volume_context=dict(req_context),
        secrets=dict(req_secrets),
        service_account=req_context.get(POD_SA_NAME, ""),
        secret_ref="",
    )
