"""The committed stubs must match the .proto sources, and the wire numbers must not move."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from secrets_store_api import csi_pb2, provider_pb2

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ["secrets_store_api/provider.proto", "secrets_store_api/csi.proto"]


def test_generated_stubs_do_not_drift(tmp_path: Path) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            "-I",
            str(ROOT / "proto"),
            f"--python_out={tmp_path}",
            f"--pyi_out={tmp_path}",
            f"--grpc_python_out={tmp_path}",
            *(str(ROOT / "proto" / p) for p in PROTOS),
        ],
        check=True,
    )
    generated = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*_pb2*"))
    assert generated, "protoc produced nothing"
    for rel in generated:
        committed = ROOT / rel
        assert committed.read_bytes() == (tmp_path / rel).read_bytes(), f"{rel} drifted: make proto"


def test_provider_wire_numbers() -> None:
    fields = {
        (m.name, f.name): f.number
        for m in provider_pb2.DESCRIPTOR.message_types_by_name.values()
        for f in m.fields
    }
    assert provider_pb2.DESCRIPTOR.package == "v1alpha1"
    assert fields == {
        ("VersionRequest", "version"): 1,
        ("VersionResponse", "version"): 1,
        ("VersionResponse", "runtime_name"): 2,
        ("VersionResponse", "runtime_version"): 3,
        ("MountRequest", "attributes"): 1,
        ("MountRequest", "secrets"): 2,
        ("MountRequest", "target_path"): 3,
        ("MountRequest", "permission"): 4,
        ("MountRequest", "current_object_version"): 5,
        ("MountResponse", "object_version"): 1,
        ("MountResponse", "error"): 2,
        ("MountResponse", "files"): 3,
        ("ObjectVersion", "id"): 1,
        ("ObjectVersion", "version"): 2,
        ("Error", "code"): 1,
        ("File", "path"): 1,
        ("File", "mode"): 2,
        ("File", "contents"): 3,
    }
    service = provider_pb2.DESCRIPTOR.services_by_name["CSIDriverProvider"]
    assert [m.name for m in service.methods] == ["Version", "Mount"]


def test_csi_wire_numbers() -> None:
    assert csi_pb2.DESCRIPTOR.package == "csi.v1"
    publish = csi_pb2.NodePublishVolumeRequest.DESCRIPTOR.fields_by_name
    assert {n: publish[n].number for n in publish} == {
        "volume_id": 1,
        "publish_context": 2,
        "staging_target_path": 3,
        "target_path": 4,
        "volume_capability": 5,
        "readonly": 6,
        "secrets": 7,
        "volume_context": 8,
    }
    unpublish = csi_pb2.NodeUnpublishVolumeRequest.DESCRIPTOR.fields_by_name
    assert {n: unpublish[n].number for n in unpublish} == {"volume_id": 1, "target_path": 2}
    info = csi_pb2.GetPluginInfoResponse.DESCRIPTOR.fields_by_name
    assert {n: info[n].number for n in info} == {"name": 1, "vendor_version": 2, "manifest": 3}
