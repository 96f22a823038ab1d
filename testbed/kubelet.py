"""Plays kubelet for CSI inline volumes: creates the Pod, requests its service-account token
for the CSIDriver's audiences, and calls NodePublishVolume / NodeUnpublishVolume with exactly
what kubelet 1.37 sends, on a kubelet-shaped target path."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc import aio
from lightkube import AsyncClient
from lightkube.models.authentication_v1 import BoundObjectReference, TokenRequestSpec
from lightkube.models.core_v1 import (
    Container,
    CSIVolumeSource,
    LocalObjectReference,
    PodSecurityContext,
    PodSpec,
    Volume,
    VolumeMount,
)
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Pod, Secret, ServiceAccountToken
from lightkube.resources.storage_v1 import CSIDriver

from secrets_store_api import csi_pb2, csi_pb2_grpc

DRIVER = "secrets-store.csi.k8s.io"
NODE_NAME = "node-1"


def volume_dir(kubelet_root: Path, pod_uid: str, volume: str) -> Path:
    """The parent kubelet makes for a pod's CSI volume; the driver mounts at its `mount`."""
    return kubelet_root / "pods" / pod_uid / "volumes" / "kubernetes.io~csi" / volume


@dataclass
class PodVolume:
    pod: Pod
    volume: str
    target: Path
    volume_id: str
    volume_context: dict[str, str]
    secrets: dict[str, str]
    readonly: bool
    # volume_capability.mount.volume_mount_group: the pod's fsGroup, "" without one
    mount_group: str = ""

    @property
    def uid(self) -> str:
        assert self.pod.metadata is not None and self.pod.metadata.uid is not None
        return self.pod.metadata.uid


class Kubelet:
    def __init__(
        self, client: AsyncClient, root: Path, csi_socket: str, node_name: str = NODE_NAME
    ) -> None:
        self.client = client
        self.root = root
        self.node_name = node_name  # pods are bound to it; the driver's --nodeid must match
        self.channel = aio.insecure_channel(f"unix://{csi_socket}")
        self.node = csi_pb2_grpc.NodeStub(self.channel)

    async def close(self) -> None:
        await self.channel.close()

    async def create_pod(
        self,
        namespace: str,
        name: str,
        spc: str,
        *,
        volume: str = "secrets-store",
        read_only: bool = True,
        service_account: str = "default",
        secret_ref: str | None = None,
        fs_group: int | None = None,
    ) -> Pod:
        attrs = {"secretProviderClass": spc}
        pod = Pod(
            metadata=ObjectMeta(name=name, namespace=namespace),
            spec=PodSpec(
                nodeName=self.node_name,
                securityContext=None if fs_group is None else PodSecurityContext(fsGroup=fs_group),
                serviceAccountName=service_account,
                automountServiceAccountToken=False,
                terminationGracePeriodSeconds=0,
                containers=[
                    Container(
                        name="app",
                        image="busybox",
                        volumeMounts=[
                            VolumeMount(name=volume, mountPath="/mnt/secrets", readOnly=True)
                        ],
                    )
                ],
                volumes=[
                    Volume(
                        name=volume,
                        csi=CSIVolumeSource(
                            driver=DRIVER,
                            readOnly=read_only,
                            volumeAttributes=attrs,
                            nodePublishSecretRef=(
                                LocalObjectReference(name=secret_ref) if secret_ref else None
                            ),
                        ),
                    )
                ],
            ),
        )
        return await self.client.create(pod)

    async def _tokens(self, pod: Pod) -> str:
        """`{"<audience>":{"token":…,"expirationTimestamp":…}}`, as kubelet formats them."""
        driver = await self.client.get(CSIDriver, DRIVER)
        assert driver.spec is not None and pod.metadata is not None and pod.spec is not None
        out: dict[str, dict[str, str]] = {}
        for req in driver.spec.tokenRequests or []:
            tr = await self.client.create(
                ServiceAccountToken(
                    metadata=ObjectMeta(),
                    spec=TokenRequestSpec(
                        audiences=[req.audience],
                        expirationSeconds=req.expirationSeconds or 3600,
                        boundObjectRef=BoundObjectReference(
                            apiVersion="v1",
                            kind="Pod",
                            name=pod.metadata.name,
                            uid=pod.metadata.uid,
                        ),
                    ),
                ),
                name=pod.spec.serviceAccountName or "default",
                namespace=pod.metadata.namespace,
            )
            status = tr.status
            assert status is not None and status.token and status.expirationTimestamp
            out[req.audience] = {
                "token": status.token,
                "expirationTimestamp": status.expirationTimestamp.strftime("%Y-%m-%dT%H:%M:%SZ"),
            }
        return json.dumps(out, separators=(",", ":")) if out else ""

    async def volume(self, pod: Pod, volume: str = "secrets-store") -> PodVolume:
        assert pod.metadata is not None and pod.spec is not None
        uid = pod.metadata.uid
        assert uid is not None
        spec = next(v for v in pod.spec.volumes or [] if v.name == volume)
        assert spec.csi is not None
        parent = volume_dir(self.root, uid, volume)
        parent.mkdir(mode=0o750, parents=True, exist_ok=True)
        os.chmod(parent, 0o750)
        (parent / "vol_data.json").write_text(
            json.dumps(
                {"driverName": DRIVER, "volumeHandle": "", "volumeLifecycleMode": "Ephemeral"}
            )
        )
        context = dict(spec.csi.volumeAttributes or {})
        context.update(
            {
                "csi.storage.k8s.io/pod.name": pod.metadata.name or "",
                "csi.storage.k8s.io/pod.namespace": pod.metadata.namespace or "",
                "csi.storage.k8s.io/pod.uid": uid,
                "csi.storage.k8s.io/serviceAccount.name": pod.spec.serviceAccountName or "default",
                "csi.storage.k8s.io/ephemeral": "true",
            }
        )
        secrets = await self._publish_secrets(pod, spec.csi)
        driver = await self.client.get(CSIDriver, DRIVER)
        assert driver.spec is not None
        tokens = await self._tokens(pod)
        if tokens:
            if driver.spec.serviceAccountTokenInSecrets:
                secrets["csi.storage.k8s.io/serviceAccount.tokens"] = tokens
            else:
                context["csi.storage.k8s.io/serviceAccount.tokens"] = tokens
        volume_id = "csi-" + hashlib.sha256((uid + volume).encode()).hexdigest()
        return PodVolume(
            mount_group=await self._mount_group(pod),
            pod=pod,
            volume=volume,
            target=parent / "mount",
            volume_id=volume_id,
            volume_context=context,
            secrets=secrets,
            readonly=bool(spec.csi.readOnly),
        )

    async def _mount_group(self, pod: Pod) -> str:
        """kubelet 1.37 (csi_mounter.go SetUpAt) hands the pod's fsGroup to a driver that
        advertises VOLUME_MOUNT_GROUP, whatever the CSIDriver's fsGroupPolicy (seen on the real
        node, tests/e2e/test_fsgroup.py), and to no other driver."""
        sc = pod.spec.securityContext if pod.spec is not None else None
        if sc is None or sc.fsGroup is None:
            return ""
        caps = await self.node.NodeGetCapabilities(csi_pb2.NodeGetCapabilitiesRequest(), timeout=5)
        mount_group = csi_pb2.NodeServiceCapability.RPC.VOLUME_MOUNT_GROUP
        return str(sc.fsGroup) if any(c.rpc.type == mount_group for c in caps.capabilities) else ""

    async def _publish_secrets(self, pod: Pod, csi: CSIVolumeSource) -> dict[str, str]:
        """The nodePublishSecretRef Secret's data, decoded, as kubelet passes it."""
        ref = csi.nodePublishSecretRef
        if ref is None:
            return {}
        assert pod.metadata is not None and ref.name is not None
        secret = await self.client.get(Secret, ref.name, namespace=pod.metadata.namespace)
        return {k: base64.b64decode(v).decode() for k, v in (secret.data or {}).items()}

    def publish_request(self, v: PodVolume) -> csi_pb2.NodePublishVolumeRequest:
        return csi_pb2.NodePublishVolumeRequest(
            volume_id=v.volume_id,
            target_path=str(v.target),
            volume_capability=csi_pb2.VolumeCapability(
                mount=csi_pb2.VolumeCapability.MountVolume(volume_mount_group=v.mount_group),
                access_mode=csi_pb2.VolumeCapability.AccessMode(
                    mode=csi_pb2.VolumeCapability.AccessMode.SINGLE_NODE_WRITER
                ),
            ),
            readonly=v.readonly,
            secrets=v.secrets,
            volume_context=v.volume_context,
        )

    async def publish(self, v: PodVolume, deadline: float = 30) -> None:
        await self.node.NodeGetCapabilities(csi_pb2.NodeGetCapabilitiesRequest(), timeout=5)
        await self.node.NodePublishVolume(self.publish_request(v), timeout=deadline)

    async def unpublish(self, v: PodVolume, deadline: float = 30) -> None:
        await self.node.NodeUnpublishVolume(
            csi_pb2.NodeUnpublishVolumeRequest(volume_id=v.volume_id, target_path=str(v.target)),
            timeout=deadline,
        )

    async def unpublish_as_kubelet(self, v: PodVolume, attempts: int = 20) -> None:
        """Unpublish, retried as kubelet retries it while the driver answers ABORTED (another
        operation on that target in flight, e.g. a rotation tick's swap)."""
        for attempt in range(attempts):
            try:
                await self.unpublish(v)
                return
            except aio.AioRpcError as exc:
                if exc.code() != grpc.StatusCode.ABORTED or attempt == attempts - 1:
                    raise
                await asyncio.sleep(0.2)

    async def delete_pod(self, pod: Pod) -> None:
        assert pod.metadata is not None and pod.metadata.name is not None
        await self.client.delete(
            Pod, pod.metadata.name, namespace=pod.metadata.namespace, grace_period=0
        )


def rpc_error(e: BaseException) -> tuple[grpc.StatusCode, str]:
    assert isinstance(e, aio.AioRpcError), e
    return e.code(), e.details() or ""
