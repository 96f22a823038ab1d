"""Secret sync's pure parts: secretObjects parsing, target-path checks, file reads, tls split,
owners. No API server."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from lightkube.resources.core_v1 import Pod

from csi_driver import tls_split
from csi_driver.secret_objects import (
    DataItem,
    SecretObject,
    SyncError,
    build_data,
    owners_for,
    parse_secret_objects,
    read_mounted,
)
from csi_driver.secret_writer import merge_owners
from csi_driver.sync_index import SyncIndex
from csi_driver.volumes import parse_target

from .test_sync import chain, pem, pkcs8


def spc(*objects: dict[str, object]) -> dict[str, object]:
    return {"metadata": {"namespace": "ns", "name": "s"}, "spec": {"secretObjects": list(objects)}}


def test_parse_valid_and_upstream_type_mapping() -> None:
    objs, errors = parse_secret_objects(
        spc(
            {
                "secretName": " foo ",
                "type": "kubernetes.io/tls",
                "labels": {"a": "b"},
                "annotations": {"c": "d"},
                "data": [{"objectName": "x", "key": "tls.crt"}],
            },
            {"secretName": "bar", "type": "custom", "data": [{"objectName": "y", "key": "k"}]},
        )
    )
    assert errors == []
    assert [(o.secret_name, o.type) for o in objs] == [
        ("foo", "kubernetes.io/tls"),
        ("bar", "Opaque"),
    ]
    assert objs[0].labels == {"a": "b"} and objs[0].annotations == {"c": "d"}


@pytest.mark.parametrize(
    ("obj", "message"),
    [
        ({"type": "Opaque", "data": [{"objectName": "a", "key": "k"}]}, "secretName is empty"),
        (
            {"secretName": "a" * 254, "type": "Opaque", "data": [{"objectName": "a", "key": "k"}]},
            "not a valid Secret name",
        ),
        (
            {"secretName": "UPPER", "type": "Opaque", "data": [{"objectName": "a", "key": "k"}]},
            "not a valid Secret name",
        ),
        ({"secretName": "s", "data": [{"objectName": "a", "key": "k"}]}, "type is empty"),
        ({"secretName": "s", "type": "Opaque"}, "data is empty"),
        ({"secretName": "s", "type": "Opaque", "data": [{"key": "k"}]}, "objectName in data"),
        ({"secretName": "s", "type": "Opaque", "data": [{"objectName": "a"}]}, "key for"),
        (
            {"secretName": "s", "type": "Opaque", "data": [{"objectName": "a", "key": "a/b"}]},
            "data key 'a/b' is not valid",
        ),
    ],
)
def test_parse_invalid(obj: dict[str, object], message: str) -> None:
    objs, errors = parse_secret_objects(spc(obj))
    assert objs == []
    [error] = errors
    assert message in error and "spc ns/s" in error


def test_parse_duplicates_sync_none_of_them() -> None:
    d = [{"objectName": "a", "key": "k"}]
    objs, errors = parse_secret_objects(
        spc(
            {"secretName": "x", "type": "Opaque", "data": d},
            {"secretName": "y", "type": "Opaque", "data": d},
            {"secretName": "x", "type": "Opaque", "data": d},
        )
    )
    assert [o.secret_name for o in objs] == ["y"]
    assert errors == [
        "secretObjects 0, 2 in spc ns/s all write Secret x: none of them is synced "
        "(merge them into one)"
    ]


def volume_of(target: str) -> tuple[str, str] | None:
    """What sync reads from a target path: (pod uid, volume) of a kubelet-shaped one."""
    parsed = parse_target(target)
    return (parsed.pod_uid, parsed.volume) if parsed.kubelet_shaped else None


def test_volume_of() -> None:
    base = "/var/lib/kubelet/pods/uid-1/volumes/kubernetes.io~csi/vol/mount"
    assert volume_of(base) == ("uid-1", "vol")
    assert volume_of(base + "/") == ("uid-1", "vol")
    assert volume_of("/var/lib/kubelet/pods/uid-1/volumes/kubernetes.io~csi/vol/mount/x") is None
    assert volume_of("/tmp/x") is None
    assert volume_of(base.replace("/vol/", "/vol/../other/")) == ("uid-1", "other")


def test_read_mounted_stays_inside(tmp_path: Path) -> None:
    target = tmp_path / "mount"
    target.mkdir()
    (tmp_path / "outside").write_text("secret")
    (target / "ok").write_text("v")
    (target / "sub").mkdir()
    (target / "sub" / "f").write_text("w")
    (target / "link").symlink_to(tmp_path / "outside")
    assert read_mounted(str(target), "ok") == b"v"
    assert read_mounted(str(target), "sub/f") == b"w"
    for bad in ("/etc/passwd", "../outside", "sub/../../outside", "./ok", "..data/../x"):
        with pytest.raises(SyncError):
            read_mounted(str(target), bad)
    with pytest.raises(SyncError, match="points outside"):
        read_mounted(str(target), "link")
    with pytest.raises(SyncError, match="not found in the pod"):
        read_mounted(str(target), "nope")


def test_build_data_size_limit(tmp_path: Path) -> None:
    (tmp_path / "half").write_bytes(b"x" * (1 << 19))
    obj = SecretObject(0, "s", "Opaque", {}, {}, ())
    ok = SecretObject(0, "s", "Opaque", {}, {}, (DataItem("half", "a"), DataItem("half", "b")))
    assert sum(map(len, build_data(ok, str(tmp_path)).values())) == 1 << 20  # exactly 1 MiB
    (tmp_path / "more").write_bytes(b"x")
    over = SecretObject(0, "s", "Opaque", {}, {}, (*ok.data, DataItem("more", "c")))
    with pytest.raises(SyncError, match="1048577 bytes, over the 1 MiB"):
        build_data(over, str(tmp_path))
    assert build_data(obj, str(tmp_path)) == {}


def test_tls_pkcs1_for_rsa_and_order() -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    certs = chain(key)
    # chain first, key last, root before the leaf: still leaf first out
    content = (pem(certs[::-1]) + pkcs8(key)).encode()
    assert tls_split.tls_value(content, "tls.key").startswith(b"-----BEGIN RSA PRIVATE KEY-----")
    assert x509.load_pem_x509_certificates(tls_split.tls_value(content, "tls.crt"))[0] == certs[0]
    ca = x509.load_pem_x509_certificates(tls_split.tls_value(content, "ca.crt"))
    assert set(ca) == set(certs[1:])
    assert tls_split.tls_value(content, "other") == content  # other keys: the file as is


def test_tls_pfx_binary_and_base64() -> None:
    key = ec.generate_private_key(ec.SECP384R1())
    certs = chain(key)
    pfx = pkcs12.serialize_key_and_certificates(
        None, key, certs[0], certs[1:], serialization.NoEncryption()
    )
    for content in (pfx, base64.b64encode(pfx)):
        k = tls_split.tls_value(content, "tls.key")
        assert k.startswith(b"-----BEGIN EC PRIVATE KEY-----")
        assert (
            x509.load_pem_x509_certificates(tls_split.tls_value(content, "tls.crt"))[0]
            == (certs[0])
        )


def test_tls_encrypted_key_refused() -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    enc = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"pw"),
    )
    with pytest.raises(tls_split.TlsError, match="encrypted"):
        tls_split.tls_value(enc + pem(chain(key)).encode(), "tls.key")


def _pod(meta: dict[str, object]) -> Pod:
    return Pod.from_dict({"metadata": meta})


def test_owners() -> None:
    spcps = {"metadata": {"name": "p-ns-s", "uid": "u-spcps"}}
    bare = _pod({})
    assert owners_for(bare, spcps) == [
        {
            "apiVersion": "secrets-store.csi.x-k8s.io/v1",
            "kind": "SecretProviderClassPodStatus",
            "name": "p-ns-s",
            "uid": "u-spcps",
        }
    ]
    rs = {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "rs", "uid": "u-rs"}
    other = {"apiVersion": "v1", "kind": "ConfigMap", "name": "c", "uid": "u-c"}
    pod = _pod({"ownerReferences": [other, {**rs, "controller": True}]})
    assert owners_for(pod, spcps) == [rs]
    assert owners_for(_pod({"ownerReferences": [other]}), spcps) == [other]
    existing = [{**other, "blockOwnerDeletion": True}]
    assert merge_owners(existing, [rs, other]) == [existing[0], rs]


def test_index_keeps_what_sync_reads_of_an_spcps() -> None:
    """The watch's SPCPS is kept without managedFields and the like (memory per mount), but
    with every field reconcile and owners_for read, and its status whole."""
    status = {"podName": "p", "secretProviderClassName": "s", "targetPath": "/t", "objects": []}
    meta = {
        "name": "p-ns-s",
        "namespace": "ns",
        "uid": "u",
        "labels": {"internal.secrets-store.csi.k8s.io/node-name": "n"},
        "deletionTimestamp": "2026-12-06T00:00:00Z",
    }
    heavy = {"managedFields": [{"manager": "x", "fieldsV1": {"f:status": {}}}], "annotations": {}}
    index = SyncIndex()
    assert index.on_spcps("ADDED", {"metadata": {**meta, **heavy}, "status": status}) == [
        ("ns", "p-ns-s")
    ]
    assert index.spcps(("ns", "p-ns-s")) == {"metadata": meta, "status": status}
    assert index.on_spcps("MODIFIED", {"metadata": {**meta, **heavy}, "status": status}) == []
    changed = {**status, "objects": [{"id": "secret/a", "version": "2"}]}
    assert index.on_spcps("MODIFIED", {"metadata": meta, "status": changed}) == [("ns", "p-ns-s")]
