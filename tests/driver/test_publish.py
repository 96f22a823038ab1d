"""NodePublishVolume / NodeUnpublishVolume end to end: real kube-apiserver, the driver as a
process under its own ServiceAccount, a kubelet stand-in, the fake provider."""

from __future__ import annotations

import json
import os
import stat

from lightkube import AsyncClient

from csi_driver import mounter
from csi_driver.kube import NODE_LABEL, SecretProviderClassPodStatus
from testbed.driver import DriverProcess
from testbed.kubelet import Kubelet

from .conftest import SpcFactory, unique


async def test_publish_read_unpublish(
    kubelet: Kubelet,
    driver: DriverProcess,
    make_spc: SpcFactory,
    admin_client: AsyncClient,
    namespace: str,
) -> None:
    spc = await make_spc(
        {
            "keyvaultName": "kv",
            "fake.files": {"db/password": "s3cret", "user": "alice"},
            "fake.versions": {"secret/user": "2", "secret/db": "1", "key/a": "9"},
        }
    )
    pod = await kubelet.create_pod(namespace, unique("app"), spc)
    vol = await kubelet.volume(pod)
    before = driver.metric("node_publish_total", provider="fake")

    await kubelet.publish(vol)

    target = vol.target
    assert (target / "user").read_text() == "alice"
    assert (target / "db" / "password").read_text() == "s3cret"
    # kubelet's layout: user-visible symlinks into ..data, which points at a timestamped dir
    assert os.readlink(target / "user") == "..data/user"
    assert os.readlink(target / "db") == "..data/db"
    assert os.readlink(target / "..data").startswith("..")
    assert stat.S_IMODE(os.stat(target / "user").st_mode) == 0o644
    # a size-capped tmpfs with nosuid,nodev,noexec
    assert mounter.mount_points()[str(target)] == "tmpfs"
    per_mount, super_opts = mounter.mount_options(str(target)) or ("", "")
    assert {"nosuid", "nodev", "noexec"} <= set(per_mount.split(","))
    assert "size=16384k" in super_opts
    # what the provider got, exactly as upstream builds it
    attrs = json.loads((target / "attributes.json").read_text())
    assert attrs["keyvaultName"] == "kv"
    assert attrs["secretProviderClass"] == spc
    assert attrs["csi.storage.k8s.io/pod.name"] == pod.metadata.name
    assert attrs["csi.storage.k8s.io/pod.namespace"] == namespace
    assert attrs["csi.storage.k8s.io/pod.uid"] == vol.uid
    assert attrs["csi.storage.k8s.io/serviceAccount.name"] == "default"
    assert attrs["csi.storage.k8s.io/ephemeral"] == "true"
    tokens = json.loads(attrs["csi.storage.k8s.io/serviceAccount.tokens"])
    # the CSIDriver's tokenRequests: workload identity and identity binding, as upstream's chart
    assert set(tokens) == {"api://AzureADTokenExchange", "api://AKSIdentityBinding"}
    assert all(t["token"].count(".") == 2 for t in tokens.values())
    assert (target / "permission").read_text() == "420"
    secrets = json.loads((target / "secrets.json").read_text())
    assert set(secrets) == {"csi.storage.k8s.io/serviceAccount.tokens"}
    # the SecretProviderClassPodStatus
    name = f"{pod.metadata.name}-{namespace}-{spc}"
    spcps = (
        await admin_client.get(SecretProviderClassPodStatus, name, namespace=namespace)
    ).to_dict()
    assert spcps["metadata"]["labels"][NODE_LABEL] == "node-1"
    [owner] = spcps["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["name"], owner["uid"]) == ("Pod", pod.metadata.name, vol.uid)
    assert spcps["status"] == {
        "podName": pod.metadata.name,
        "secretProviderClassName": spc,
        "mounted": True,
        "targetPath": str(target),
        "objects": [
            {"id": "key/a", "version": "9"},
            {"id": "secret/db", "version": "1"},
            {"id": "secret/user", "version": "2"},
        ],
    }
    assert driver.metric("node_publish_total", provider="fake", os_type="linux") == before + 1
    # logs carry neither the token nor the secrets
    token = tokens["api://AzureADTokenExchange"]["token"]
    assert token not in driver.logs()
    assert "s3cret" not in driver.logs()

    # publishing an already-mounted target is OK and changes nothing
    await kubelet.publish(vol)
    assert (target / "user").read_text() == "alice"

    unpub_before = driver.metric("node_unpublish_total")
    await kubelet.unpublish(vol)
    assert not target.exists()
    assert str(target) not in mounter.mount_points()
    assert target.parent.is_dir()  # kubelet's directory stays; the driver made only `mount`
    assert driver.metric("node_unpublish_total") == unpub_before + 1
    await kubelet.delete_pod(pod)


async def test_v1alpha1_secretproviderclass(
    kubelet: Kubelet, driver: DriverProcess, make_spc: SpcFactory, namespace: str
) -> None:
    spc = await make_spc({"fake.files": {"a": "1"}}, version="v1alpha1")
    pod = await kubelet.create_pod(namespace, unique("alpha"), spc)
    vol = await kubelet.volume(pod)
    await kubelet.publish(vol)
    assert (vol.target / "a").read_text() == "1"
    await kubelet.unpublish(vol)
    await kubelet.delete_pod(pod)


async def test_spcps_collected_with_pod(
    kubelet: Kubelet,
    driver: DriverProcess,
    make_spc: SpcFactory,
    admin_client: AsyncClient,
    namespace: str,
) -> None:
    """The ownerReference works: kube-controller-manager's garbage collector removes it."""
    import asyncio

    from lightkube import ApiError

    spc = await make_spc({"fake.files": {"a": "1"}})
    pod = await kubelet.create_pod(namespace, unique("gc"), spc)
    vol = await kubelet.volume(pod)
    await kubelet.publish(vol)
    await kubelet.unpublish(vol)
    await kubelet.delete_pod(pod)
    name = f"{pod.metadata.name}-{namespace}-{spc}"
    for _ in range(200):
        try:
            await admin_client.get(SecretProviderClassPodStatus, name, namespace=namespace)
        except ApiError as e:
            assert e.status.code == 404
            return
        await asyncio.sleep(0.1)
    raise AssertionError("SPCPS not garbage-collected within 20 s")
