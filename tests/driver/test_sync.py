"""secretObjects → Kubernetes Secrets, end to end: real kube-apiserver and
kube-controller-manager (garbage collector on), the driver as a process under its own
ServiceAccount, a kubelet stand-in, the fake provider."""

from __future__ import annotations

import asyncio
import base64
import datetime
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import NameOID
from lightkube import ApiError, AsyncClient
from lightkube.models.core_v1 import (
    Container,
    CSIVolumeSource,
    EnvVar,
    EnvVarSource,
    PodSpec,
    SecretKeySelector,
    Volume,
    VolumeMount,
)
from lightkube.models.meta_v1 import ObjectMeta, OwnerReference
from lightkube.resources.apps_v1 import ReplicaSet
from lightkube.resources.core_v1 import Event, Pod, Secret
from lightkube.types import CascadeType, PatchType

from csi_driver.kube import NODE_LABEL, SecretProviderClass, SecretProviderClassPodStatus
from testbed.driver import DriverProcess
from testbed.kubelet import DRIVER, NODE_NAME, Kubelet, PodVolume

from .conftest import unique

MANAGED = "secrets-store.csi.k8s.io/managed"


# ---- helpers ---------------------------------------------------------------------------------


async def make_spc(
    client: AsyncClient,
    namespace: str,
    files: dict[str, str],
    secret_objects: list[dict[str, Any]],
    **params: str,
) -> str:
    name = unique("sync")
    parameters = {"fake.files": json.dumps(files), **params}
    body = {
        "apiVersion": "secrets-store.csi.x-k8s.io/v1",
        "kind": "SecretProviderClass",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"provider": "fake", "parameters": parameters, "secretObjects": secret_objects},
    }
    await client.create(SecretProviderClass.from_dict(body))
    return name


async def make_pod(
    client: AsyncClient,
    namespace: str,
    spc: str,
    *,
    node: str = NODE_NAME,
    owners: list[OwnerReference] | None = None,
    env: list[EnvVar] | None = None,
) -> Pod:
    pod = Pod(
        metadata=ObjectMeta(name=unique("pod"), namespace=namespace, ownerReferences=owners),
        spec=PodSpec(
            nodeName=node,
            automountServiceAccountToken=False,
            terminationGracePeriodSeconds=0,
            containers=[
                Container(
                    name="app",
                    image="busybox",
                    env=env,
                    volumeMounts=[
                        VolumeMount(name="secrets-store", mountPath="/mnt/s", readOnly=True)
                    ],
                )
            ],
            volumes=[
                Volume(
                    name="secrets-store",
                    csi=CSIVolumeSource(
                        driver=DRIVER, readOnly=True, volumeAttributes={"secretProviderClass": spc}
                    ),
                )
            ],
        ),
    )
    return await client.create(pod)


async def mount(kubelet: Kubelet, client: AsyncClient, ns: str, spc: str, **kw: Any) -> PodVolume:
    pod = await make_pod(client, ns, spc, **kw)
    vol = await kubelet.volume(pod)
    await kubelet.publish(vol)
    return vol


async def get_secret(client: AsyncClient, ns: str, name: str) -> dict[str, Any] | None:
    try:
        return (await client.get(Secret, name, namespace=ns)).to_dict()  # type: ignore[no-any-return]
    except ApiError as e:
        if e.status.code == 404:
            return None
        raise


def decoded(secret: dict[str, Any]) -> dict[str, bytes]:
    return {k: base64.b64decode(v) for k, v in (secret.get("data") or {}).items()}


async def eventually(check: Callable[[], Any], what: str = "condition") -> Any:
    deadline = asyncio.get_running_loop().time() + 15.0
    while True:
        result = await check()
        if result:
            return result
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def pod_events(client: AsyncClient, pod: Pod) -> list[dict[str, Any]]:
    assert pod.metadata is not None
    return [
        e.to_dict()
        async for e in client.list(
            Event,
            namespace=pod.metadata.namespace,
            fields={"involvedObject.uid": pod.metadata.uid or ""},
        )
    ]


async def wait_event(client: AsyncClient, pod: Pod, text: str, kind: str = "Warning") -> str:
    async def check() -> str:
        for e in await pod_events(client, pod):
            if text in e["message"] and e["type"] == kind:
                return str(e["message"])
        return ""

    message: str = await eventually(check, what=f"event {text!r}")
    return message


def chain(key: Any) -> list[x509.Certificate]:
    """leaf (for `key`) → intermediate → root."""
    now = datetime.datetime.now(datetime.UTC)
    keys = [key, ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())]
    names = ["leaf.example.com", "Test Intermediate", "Test Root"]
    certs: list[x509.Certificate] = []
    for i in (2, 1, 0):
        issuer = i + 1 if i < 2 else 2
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[i])]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[issuer])]))
            .public_key(keys[i].public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now)
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=i > 0, path_length=None), critical=True)
        )
        algo = None if isinstance(keys[issuer], ed25519.Ed25519PrivateKey) else hashes.SHA256()
        certs.insert(0, builder.sign(keys[issuer], algo))
    return certs


def pem(certs: list[x509.Certificate]) -> str:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs).decode()


def pkcs8(key: Any) -> str:
    return key.private_bytes(  # type: ignore[no-any-return]
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


TLS_ITEMS = [
    {"objectName": "cert.pem", "key": "tls.crt"},
    {"objectName": "cert.pem", "key": "tls.key"},
    {"objectName": "cert.pem", "key": "ca.crt"},
]


# ---- behaviour -------------------------------------------------------------------------------


async def test_foosecret_on_first_mount_with_owner_and_gc(
    kubelet: Kubelet, driver: DriverProcess, admin_client: AsyncClient, namespace: str
) -> None:
    """The seeds' example: the Secret exists when publish returns; a bare pod's Secret is owned
    by its SPCPS and collected with the pod."""
    name = unique("foosecret")
    spc = await make_spc(
        admin_client,
        namespace,
        {"foo1": "alice", "db/password": "s3cret"},
        [
            {
                "secretName": name,
                "type": "Opaque",
                "labels": {"app": "web"},
                "annotations": {"team": "payments"},
                "data": [
                    {"objectName": "foo1", "key": "username"},
                    {"objectName": "db/password", "key": "password"},
                ],
            }
        ],
    )
    synced = driver.metric("sync_k8s_secret_total", provider="fake")
    durations = driver.metric("k8s_secret_duration_sec_count")
    env = [
        EnvVar(
            name="SECRET_USERNAME",
            valueFrom=EnvVarSource(secretKeyRef=SecretKeySelector(name=name, key="username")),
        )
    ]
    vol = await mount(kubelet, admin_client, namespace, spc, env=env)

    secret = await get_secret(admin_client, namespace, name)  # no waiting: made during publish
    assert secret is not None
    assert secret["type"] == "Opaque"
    assert decoded(secret) == {"username": b"alice", "password": b"s3cret"}
    assert secret["metadata"]["labels"] == {"app": "web", MANAGED: "true"}
    assert secret["metadata"]["annotations"] == {"team": "payments"}
    spcps = (
        await admin_client.get(
            SecretProviderClassPodStatus,
            f"{vol.pod.metadata.name}-{namespace}-{spc}",  # type: ignore[union-attr]
            namespace=namespace,
        )
    ).to_dict()
    [owner] = secret["metadata"]["ownerReferences"]
    assert owner == {
        "apiVersion": "secrets-store.csi.x-k8s.io/v1",
        "kind": "SecretProviderClassPodStatus",
        "name": spcps["metadata"]["name"],
        "uid": spcps["metadata"]["uid"],
    }
    # what an env var consumer resolves: secretKeyRef name/key exist in the object
    ref = vol.pod.spec.containers[0].env[0].valueFrom.secretKeyRef  # type: ignore[index,union-attr]
    assert decoded(secret)[ref.key] == b"alice" and ref.name == name
    assert driver.metric("sync_k8s_secret_total", provider="fake", os_type="linux") == synced + 1
    assert driver.metric("k8s_secret_duration_sec_count") == durations + 1

    # the pod goes → SPCPS collected → Secret collected (kube-controller-manager's GC)
    await kubelet.unpublish(vol)
    await kubelet.delete_pod(vol.pod)

    async def gone() -> bool:
        return await get_secret(admin_client, namespace, name) is None

    await eventually(gone, what="garbage collection of the Secret")


async def test_tls_split_pem_pkcs1_and_ca(
    kubelet: Kubelet, driver: DriverProcess, admin_client: AsyncClient, namespace: str
) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    certs = chain(key)
    name = unique("tls")
    # the provider's layout for a PKCS#12 certificate: PKCS#8 key, then leaf → root
    spc = await make_spc(
        admin_client,
        namespace,
        {"cert.pem": pkcs8(key) + pem(certs)},
        [{"secretName": name, "type": "kubernetes.io/tls", "data": TLS_ITEMS}],
    )
    await mount(kubelet, admin_client, namespace, spc)
    secret = await get_secret(admin_client, namespace, name)
    assert secret is not None and secret["type"] == "kubernetes.io/tls"
    data = decoded(secret)
    assert data["tls.key"].startswith(b"-----BEGIN RSA PRIVATE KEY-----")  # PKCS#1, as upstream
    loaded = serialization.load_pem_private_key(data["tls.key"], None)
    assert loaded.private_numbers() == key.private_numbers()  # type: ignore[union-attr]
    assert data["tls.crt"].decode() == pem(certs)
    assert data["ca.crt"].decode() == pem(certs[1:])


async def test_tls_split_pfx_ecdsa_leaf_first(
    kubelet: Kubelet, driver: DriverProcess, admin_client: AsyncClient, namespace: str
) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    certs = chain(key)
    pfx = pkcs12.serialize_key_and_certificates(
        None, key, certs[0], certs[:0:-1], serialization.NoEncryption()
    )
    name = unique("tls")
    spc = await make_spc(  # objectFormat: pfx without objectEncoding: base64 text
        admin_client,
        namespace,
        {"cert.pem": base64.b64encode(pfx).decode()},
        [{"secretName": name, "type": "kubernetes.io/tls", "data": TLS_ITEMS}],
    )
    await mount(kubelet, admin_client, namespace, spc)
    secret = await get_secret(admin_client, namespace, name)
    assert secret is not None
    data = decoded(secret)
    assert data["tls.key"].startswith(b"-----BEGIN EC PRIVATE KEY-----")
    crt = x509.load_pem_x509_certificates(data["tls.crt"])
    assert crt[0] == certs[0]  # the leaf first, whatever the order in the bundle
    assert set(crt) == set(certs)
    assert set(x509.load_pem_x509_certificates(data["ca.crt"])) == set(certs[1:])


async def test_owners_merge_across_a_rollout_and_gc(
    kubelet: Kubelet, driver: DriverProcess, admin_client: AsyncClient, namespace: str
) -> None:
    """Old ReplicaSet's pod, then the new one's: owners merged by UID; deleting the old
    ReplicaSet keeps the Secret; deleting the last owner deletes it."""
    name = unique("rollout")
    spc = await make_spc(
        admin_client,
        namespace,
        {"user": "bob"},
        [{"secretName": name, "type": "Opaque", "data": [{"objectName": "user", "key": "u"}]}],
    )

    async def replicaset() -> OwnerReference:
        selector = {"app": unique("sel")}
        rs = ReplicaSet.from_dict(
            {
                "metadata": {"name": unique("rs"), "namespace": namespace},
                "spec": {  # no replicas: the pods are the test's, not the controller's
                    "replicas": 0,
                    "selector": {"matchLabels": selector},
                    "template": {
                        "metadata": {"labels": selector},
                        "spec": {"containers": [{"name": "c", "image": "busybox"}]},
                    },
                },
            }
        )
        created = await admin_client.create(rs)
        return OwnerReference(
            apiVersion="apps/v1",
            kind="ReplicaSet",
            name=created.metadata.name,
            uid=created.metadata.uid,
        )

    old = await replicaset()
    await mount(kubelet, admin_client, namespace, spc, owners=[old])
    secret = await get_secret(admin_client, namespace, name)
    assert secret is not None
    assert [o["uid"] for o in secret["metadata"]["ownerReferences"]] == [old.uid]

    new = await replicaset()
    new_vol = await mount(kubelet, admin_client, namespace, spc, owners=[new])
    secret = await get_secret(admin_client, namespace, name)
    assert secret is not None
    assert [o["uid"] for o in secret["metadata"]["ownerReferences"]] == [old.uid, new.uid]
    assert [o["kind"] for o in secret["metadata"]["ownerReferences"]] == ["ReplicaSet"] * 2

    await admin_client.delete(
        ReplicaSet, old.name, namespace=namespace, cascade=CascadeType.BACKGROUND
    )

    async def old_owner_dropped() -> bool:
        s = await get_secret(admin_client, namespace, name)
        assert s is not None, "the Secret was deleted during the rollout"
        return [o["uid"] for o in s["metadata"]["ownerReferences"]] == [new.uid]

    await eventually(old_owner_dropped, what="GC to drop the deleted ReplicaSet's reference")
    # scaled to zero: the new ReplicaSet's pod goes, the ReplicaSet stays → the Secret stays
    await kubelet.unpublish(new_vol)
    await kubelet.delete_pod(new_vol.pod)
    await asyncio.sleep(1.0)
    assert await get_secret(admin_client, namespace, name) is not None

    await admin_client.delete(
        ReplicaSet, new.name, namespace=namespace, cascade=CascadeType.BACKGROUND
    )

    async def gone() -> bool:
        return await get_secret(admin_client, namespace, name) is None

    await eventually(gone, what="GC of the Secret after its last owner")


async def test_no_write_when_nothing_changed(
    kubelet: Kubelet, driver: DriverProcess, admin_client: AsyncClient, namespace: str
) -> None:
    """Republishes, pod status churn and SPCPS re-reads cause no Secret write."""
    name = unique("idle")
    spc = await make_spc(
        admin_client,
        namespace,
        {"user": "carol"},
        [{"secretName": name, "type": "Opaque", "data": [{"objectName": "user", "key": "u"}]}],
    )
    vol = await mount(kubelet, admin_client, namespace, spc)
    secret = await get_secret(admin_client, namespace, name)
    assert secret is not None
    version = secret["metadata"]["resourceVersion"]
    writes = driver.metric("sync_k8s_secret_total")
    assert vol.pod.metadata is not None
    for i in range(5):
        await kubelet.publish(vol)  # a republish (requiresRepublish)
        await admin_client.patch(  # the pod's status churns as kubelet reports it
            Pod.Status,
            vol.pod.metadata.name,
            {"status": {"conditions": [{"type": "Ready", "status": str(i % 2 == 0)}]}},
            namespace=namespace,
        )
    await asyncio.sleep(1.0)
    secret = await get_secret(admin_client, namespace, name)
    assert secret is not None and secret["metadata"]["resourceVersion"] == version
    assert driver.metric("sync_k8s_secret_total") == writes


async def test_spc_edit_resyncs(
    kubelet: Kubelet, driver: DriverProcess, admin_client: AsyncClient, namespace: str
) -> None:
    """Editing secretObjects (a new key, a label) updates the Secret, owners kept."""
    name = unique("edited")
    objects = [{"secretName": name, "type": "Opaque", "data": [{"objectName": "a", "key": "a"}]}]
    spc = await make_spc(admin_client, namespace, {"a": "1", "b": "2"}, objects)
    await mount(kubelet, admin_client, namespace, spc)
    first = await get_secret(admin_client, namespace, name)
    assert first is not None and decoded(first) == {"a": b"1"}
    objects[0]["data"].append({"objectName": "b", "key": "b"})
    objects[0]["labels"] = {"tier": "db"}
    await admin_client.patch(
        SecretProviderClass,
        spc,
        {"spec": {"secretObjects": objects}},
        namespace=namespace,
        patch_type=PatchType.MERGE,
    )

    async def updated() -> dict[str, Any] | None:
        s = await get_secret(admin_client, namespace, name)
        return s if s is not None and decoded(s) == {"a": b"1", "b": b"2"} else None

    secret = await eventually(updated, what="resync after the SPC edit")
    assert secret["metadata"]["labels"] == {"tier": "db", MANAGED: "true"}
    assert secret["metadata"]["ownerReferences"] == first["metadata"]["ownerReferences"]


async def test_deleted_secret_comes_back_while_mounted(
    kubelet: Kubelet, driver: DriverProcess, admin_client: AsyncClient, namespace: str
) -> None:
    name = unique("again")
    spc = await make_spc(
        admin_client,
        namespace,
        {"a": "1"},
        [{"secretName": name, "type": "Opaque", "data": [{"objectName": "a", "key": "a"}]}],
    )
    await mount(kubelet, admin_client, namespace, spc)
    first = await get_secret(admin_client, namespace, name)
    assert first is not None
    await admin_client.delete(Secret, name, namespace=namespace)

    async def back() -> dict[str, Any] | None:
        s = await get_secret(admin_client, namespace, name)
        return s if s is not None and s["metadata"]["uid"] != first["metadata"]["uid"] else None

    secret = await eventually(back, what="the deleted Secret to be created again")
    assert decoded(secret) == {"a": b"1"}
    assert secret["metadata"]["ownerReferences"] == first["metadata"]["ownerReferences"]


async def test_type_change_recreates_and_says_so(
    kubelet: Kubelet, driver: DriverProcess, admin_client: AsyncClient, namespace: str
) -> None:
    name = unique("typed")
    await admin_client.create(
        Secret(
            metadata=ObjectMeta(name=name, namespace=namespace, labels={MANAGED: "true"}),
            type="Opaque",
            stringData={"username": "old"},
        )
    )
    spc = await make_spc(
        admin_client,
        namespace,
        {"u": "dave", "p": "pw"},
        [
            {
                "secretName": name,
                "type": "kubernetes.io/basic-auth",
                "data": [
                    {"objectName": "u", "key": "username"},
                    {"objectName": "p", "key": "password"},
                ],
            }
        ],
    )
    vol = await mount(kubelet, admin_client, namespace, spc)
    secret = await get_secret(admin_client, namespace, name)
    assert secret is not None and secret["type"] == "kubernetes.io/basic-auth"
    assert decoded(secret) == {"username": b"dave", "password": b"pw"}
    await wait_event(admin_client, vol.pod, "the type cannot change", kind="Normal")


async def test_immutable_managed_secret_is_recreated(
    kubelet: Kubelet, driver: DriverProcess, admin_client: AsyncClient, namespace: str
) -> None:
    name = unique("frozen")
    await admin_client.create(
        Secret(
            metadata=ObjectMeta(name=name, namespace=namespace, labels={MANAGED: "true"}),
            immutable=True,
            stringData={"a": "stale"},
        )
    )
    spc = await make_spc(
        admin_client,
        namespace,
        {"a": "fresh"},
        [{"secretName": name, "type": "Opaque", "data": [{"objectName": "a", "key": "a"}]}],
    )
    await mount(kubelet, admin_client, namespace, spc)
    secret = await get_secret(admin_client, namespace, name)
    assert secret is not None and decoded(secret) == {"a": b"fresh"}
    assert secret["metadata"]["ownerReferences"]


# ---- bad input: one test a row ---------------------------------------------------------------


async def _no_secret(client: AsyncClient, ns: str, name: str) -> None:
    await asyncio.sleep(0.2)
    assert await get_secret(client, ns, name) is None


async def test_bad_file_not_mounted(
    kubelet: Kubelet, driver: DriverProcess, admin_client: AsyncClient, namespace: str
) -> None:
    name = unique("missing")
    spc = await make_spc(  # the Key Vault name instead of the alias: the classic mistake
        admin_client,
        namespace,
        {"db-alias": "x"},
        [{"secretName": name, "type": "Opaque", "data": [{"objectName": "db", "key": "k"}]}],
    )
    vol = await mount(kubelet, admin_client, namespace, spc)  # the mount itself succeeds
    message = await wait_event(admin_client, vol.pod, "file matching objectName db not found")
    assert "objectAlias" in message
    await _no_secret(admin_client, namespace, name)


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("ed25519", "unsupported private key type"),
        ("no-key", "no private key found"),
        ("no-cert", "no certificate found"),
        ("no-ca", "no certificate above the leaf"),
        ("garbage", "neither PEM nor PKCS#12"),
    ],
)
async def test_bad_tls_bundle(
    kubelet: Kubelet,
    driver: DriverProcess,
    admin_client: AsyncClient,
    namespace: str,
    case: str,
    expected: str,
) -> None:
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    items = TLS_ITEMS[:2]
    if case == "ed25519":
        key = ed25519.Ed25519PrivateKey.generate()
        content = pkcs8(key) + pem(chain(key))
    elif case == "no-key":
        content = pem(chain(rsa_key))
    elif case == "no-cert":
        content = pkcs8(rsa_key)
    elif case == "no-ca":
        content = pkcs8(rsa_key) + pem(chain(rsa_key)[:1])
        items = TLS_ITEMS
    else:
        content = "not a certificate"
    name = unique("badtls")
    spc = await make_spc(
        admin_client,
        namespace,
        {"cert.pem": content},
        [{"secretName": name, "type": "kubernetes.io/tls", "data": items}],
    )
    vol = await mount(kubelet, admin_client, namespace, spc)
    message = await wait_event(admin_client, vol.pod, expected)
    assert "BEGIN" not in message  # no key material in events
    assert content.strip()[:16] not in message  # nor any of the object's content
    await _no_secret(admin_client, namespace, name)


async def test_bad_secret_name(
    kubelet: Kubelet, driver: DriverProcess, admin_client: AsyncClient, namespace: str
) -> None:
    spc = await make_spc(
        admin_client,
        namespace,
        {"a": "x"},
        [{"secretName": "Foo_Secret", "type": "Opaque", "data": [{"objectName": "a", "key": "k"}]}],
    )
    vol = await mount(kubelet, admin_client, namespace, spc)
    await wait_event(admin_client, vol.pod, "'Foo_Secret' is not a valid Secret name")


async def test_bad_two_secret_objects_same_secret(
    kubelet: Kubelet, driver: DriverProcess, admin_client: AsyncClient, namespace: str
) -> None:
    name, other = unique("twice"), unique("fine")
    spc = await make_spc(
        admin_client,
        namespace,
        {"a": "x", "b": "y"},
        [
            {"secretName": name, "type": "Opaque", "data": [{"objectName": "a", "key": "a"}]},
            {"secretName": other, "type": "Opaque", "data": [{"objectName": "a", "key": "a"}]},
            {"secretName": name, "type": "Opaque", "data": [{"objectName": "b", "key": "b"}]},
        ],
    )
    vol = await mount(kubelet, admin_client, namespace, spc)
    await wait_event(admin_client, vol.pod, f"secretObjects 0, 2 in spc {namespace}/{spc}")
    await _no_secret(admin_client, namespace, name)
    assert await get_secret(admin_client, namespace, other) is not None  # the others still sync


async def test_bad_secret_over_1mib(
    kubelet: Kubelet, driver: DriverProcess, admin_client: AsyncClient, namespace: str
) -> None:
    name = unique("big")
    spc = await make_spc(
        admin_client,
        namespace,
        {},
        [{"secretName": name, "type": "Opaque", "data": [{"objectName": "big", "key": "big"}]}],
        **{"fake.mode": "oversize", "fake.size": str((1 << 20) + 1)},
    )
    vol = await mount(kubelet, admin_client, namespace, spc)
    await wait_event(admin_client, vol.pod, "over the 1 MiB (1048576 bytes) limit")
    await _no_secret(admin_client, namespace, name)


async def test_bad_existing_unmanaged_secret_is_not_taken_over(
    kubelet: Kubelet, driver: DriverProcess, admin_client: AsyncClient, namespace: str
) -> None:
    name = unique("theirs")
    await admin_client.create(
        Secret(metadata=ObjectMeta(name=name, namespace=namespace), stringData={"k": "mine"})
    )
    spc = await make_spc(
        admin_client,
        namespace,
        {"a": "x"},
        [{"secretName": name, "type": "Opaque", "data": [{"objectName": "a", "key": "k"}]}],
    )
    vol = await mount(kubelet, admin_client, namespace, spc)
    await wait_event(admin_client, vol.pod, "is not managed by the driver")
    secret = await get_secret(admin_client, namespace, name)
    assert secret is not None and decoded(secret) == {"k": b"mine"}
    assert not secret["metadata"].get("ownerReferences")


async def test_bad_forged_spcps_target_path(
    kubelet: Kubelet, driver: DriverProcess, admin_client: AsyncClient, namespace: str
) -> None:
    """An SPCPS naming one pod with another pod's target path is not read."""
    name = unique("forged")
    victim_spc = await make_spc(admin_client, namespace, {"a": "victim-data"}, [])
    victim = await make_pod(admin_client, namespace, victim_spc)
    victim_vol = await kubelet.volume(victim)
    await kubelet.publish(victim_vol)
    spc = await make_spc(
        admin_client,
        namespace,
        {},
        [{"secretName": name, "type": "Opaque", "data": [{"objectName": "a", "key": "k"}]}],
    )
    attacker = await make_pod(admin_client, namespace, spc)
    assert attacker.metadata is not None
    await admin_client.create(
        SecretProviderClassPodStatus.from_dict(
            {
                "metadata": {
                    "name": unique("forged"),
                    "namespace": namespace,
                    "labels": {NODE_LABEL: NODE_NAME},
                },
                "status": {
                    "podName": attacker.metadata.name,
                    "secretProviderClassName": spc,
                    "targetPath": str(victim_vol.target),
                    "mounted": True,
                },
            }
        )
    )
    await wait_event(admin_client, attacker, "targetPath did not match pod UID")
    await _no_secret(admin_client, namespace, name)


# ---- the sync ClusterRole absent -------------------------------------------------------------


NOSYNC_NODE = "node-nosync"


@pytest.fixture(scope="module")
async def nosync_kubelet(
    control_plane: Any,
    admin_client: AsyncClient,
    root: Path,
    provider_dirs: tuple[Path, Path],
    fake_provider: Any,
) -> AsyncIterator[tuple[Kubelet, DriverProcess]]:
    """A second driver whose ServiceAccount has every role but secretprovidersyncing-role."""
    from lightkube.models.authentication_v1 import TokenRequestSpec
    from lightkube.resources.core_v1 import ServiceAccount, ServiceAccountToken
    from lightkube.resources.rbac_authorization_v1 import ClusterRoleBinding

    from testbed.controlplane import ISSUER, write_kubeconfig

    sa = "csi-driver-nosync"
    await admin_client.create(ServiceAccount(metadata=ObjectMeta(name=sa, namespace="kube-system")))
    for role in ("secretproviderclasses-role", "secretprovidertokenrequest-role"):
        await admin_client.create(
            ClusterRoleBinding.from_dict(
                {
                    "metadata": {"name": f"{role}-nosync"},
                    "roleRef": {
                        "apiGroup": "rbac.authorization.k8s.io",
                        "kind": "ClusterRole",
                        "name": role,
                    },
                    "subjects": [
                        {"kind": "ServiceAccount", "name": sa, "namespace": "kube-system"}
                    ],
                }
            )
        )
    tr = await admin_client.create(
        ServiceAccountToken(
            metadata=ObjectMeta(), spec=TokenRequestSpec(audiences=[ISSUER], expirationSeconds=3600)
        ),
        name=sa,
        namespace="kube-system",
    )
    kubeconfig = write_kubeconfig(
        root / "nosync.kubeconfig", control_plane.server, control_plane.ca_file, tr.status.token
    )
    d = DriverProcess(
        root, kubeconfig=kubeconfig, provider_dirs=provider_dirs, node_id=NOSYNC_NODE, name="nosync"
    )
    d.start()
    k = Kubelet(admin_client, root / "kubelet-nosync", str(d.socket))
    yield k, d
    await k.close()
    d.stop()


async def test_bad_sync_clusterrole_absent(
    nosync_kubelet: tuple[Kubelet, DriverProcess], admin_client: AsyncClient, namespace: str
) -> None:
    kubelet, nosync = nosync_kubelet
    name = unique("norbac")
    spc = await make_spc(
        admin_client,
        namespace,
        {"a": "x"},
        [{"secretName": name, "type": "Opaque", "data": [{"objectName": "a", "key": "k"}]}],
    )
    vol = await mount(kubelet, admin_client, namespace, spc, node=NOSYNC_NODE)
    assert (vol.target / "a").read_text() == "x"  # the mount works without the sync role
    message = await wait_event(admin_client, vol.pod, "forbidden")
    assert "secretprovidersyncing-role" in message
    await _no_secret(admin_client, namespace, name)
    # said at start too, before any pod needs it
    assert "the driver may not get/create/update/delete secrets" in nosync.logs()


# ---- two nodes, one Secret -------------------------------------------------------------------


@pytest.fixture(scope="module")
async def node2(
    root: Path,
    provider_dirs: tuple[Path, Path],
    driver_kubeconfig: Path,
    admin_client: AsyncClient,
    fake_provider: Any,
) -> AsyncIterator[tuple[Kubelet, DriverProcess]]:
    d = DriverProcess(
        root,
        kubeconfig=driver_kubeconfig,
        provider_dirs=provider_dirs,
        node_id="node-2",
        name="driver-node-2",
    )
    d.start()
    k = Kubelet(admin_client, root / "kubelet-node-2", str(d.socket))
    yield k, d
    await k.close()
    d.stop()


async def test_two_nodes_race_for_one_secret(
    kubelet: Kubelet,
    driver: DriverProcess,
    node2: tuple[Kubelet, DriverProcess],
    admin_client: AsyncClient,
    namespace: str,
) -> None:
    """Pods on two nodes mount at the same moment: one creates, the other finds it (409),
    compares and adds its owner; both owners end up on the Secret, content once."""
    kubelet2, _ = node2
    for _ in range(3):
        name = unique("shared")
        spc = await make_spc(
            admin_client,
            namespace,
            {"a": "same"},
            [{"secretName": name, "type": "Opaque", "data": [{"objectName": "a", "key": "a"}]}],
        )
        pod1 = await make_pod(admin_client, namespace, spc)
        pod2 = await make_pod(admin_client, namespace, spc, node="node-2")
        v1, v2 = await kubelet.volume(pod1), await kubelet2.volume(pod2)
        await asyncio.gather(kubelet.publish(v1), kubelet2.publish(v2))
        secret = await get_secret(admin_client, namespace, name)
        assert secret is not None and decoded(secret) == {"a": b"same"}
        owners = {o["name"] for o in secret["metadata"]["ownerReferences"]}
        assert owners == {
            f"{pod1.metadata.name}-{namespace}-{spc}",  # type: ignore[union-attr]
            f"{pod2.metadata.name}-{namespace}-{spc}",  # type: ignore[union-attr]
        }
        await kubelet.unpublish(v1)
        await kubelet2.unpublish(v2)
