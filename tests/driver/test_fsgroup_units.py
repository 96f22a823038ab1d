"""fsGroup ownership, below gRPC: the volume_mount_group rules (docs/driver.md's bad-input table,
one row a case), the atomic writer's group ownership on write and rewrite, the tmpfs root's
gid= option read back after a restart, and the mount table's memory of it. Runs as root in
tests/netns-run (chown to any group, tmpfs mounts)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from csi_driver import atomic_writer, mounter
from csi_driver.atomic_writer import FileProjection
from csi_driver.errors import InvalidRequest
from csi_driver.mounts import MountTable
from csi_driver.spcps import PodStatusRecord
from csi_driver.volumes import MOUNT_GROUP_FIELD, mount_group

GID = 2000


@pytest.mark.parametrize(
    "value",
    ["abc", "-1", "+2000", " 2000", "2000 ", "02000", "1e3", "2.5", "2147483648", "9" * 40],
)
def test_bad_mount_group_is_invalid_argument_naming_the_field(value: str) -> None:
    with pytest.raises(InvalidRequest) as e:
        mount_group(value)
    assert e.value.message.startswith(MOUNT_GROUP_FIELD)
    assert "not a decimal group id from 0 to 2147483647" in e.value.message
    assert len(e.value.message) < 200  # the value cut to 32 characters


@pytest.mark.parametrize(
    ("value", "gid"), [("", None), ("0", 0), ("2000", 2000), ("2147483647", 2**31 - 1)]
)
def test_good_mount_group(value: str, gid: int | None) -> None:
    assert mount_group(value) == gid


PAYLOAD = {
    "db-password": FileProjection(b"s3cret", 0o440),
    "history/0": FileProjection(b"v2", 0o440),
    "public.pem": FileProjection(b"pem", 0o644),
}


def _owned(target: Path, gid: int) -> list[str]:
    """Paths under the target's payload directory not group-owned by gid."""
    data = target / os.readlink(target / "..data")
    wrong = [str(data)] if data.stat().st_gid != gid else []
    for root, dirs, files in os.walk(data):
        for name in dirs + files:
            if os.lstat(os.path.join(root, name)).st_gid != gid:
                wrong.append(os.path.join(root, name))
    return wrong


def test_writer_makes_files_and_directories_group_owned(tmp_path: Path) -> None:
    atomic_writer.replace(str(tmp_path), PAYLOAD, GID)
    assert _owned(tmp_path, GID) == []
    st = (tmp_path / "db-password").stat()
    assert stat.S_IMODE(st.st_mode) == 0o440  # group reads; the world never
    assert st.st_uid == 0
    # a rewrite (rotation) keeps the group
    changed = dict(PAYLOAD, **{"db-password": FileProjection(b"n3w", 0o440)})
    assert atomic_writer.replace(str(tmp_path), changed, GID)
    assert _owned(tmp_path, GID) == []


def test_without_a_group_nothing_changes(tmp_path: Path) -> None:
    atomic_writer.replace(str(tmp_path), PAYLOAD)
    assert _owned(tmp_path, os.getgid()) == []


def test_same_content_with_another_group_is_rewritten(tmp_path: Path) -> None:
    atomic_writer.replace(str(tmp_path), PAYLOAD)
    assert atomic_writer.replace(str(tmp_path), PAYLOAD, GID)
    assert _owned(tmp_path, GID) == []
    assert not atomic_writer.replace(str(tmp_path), PAYLOAD, GID)  # now nothing to do


def test_tmpfs_root_is_group_owned_and_read_back(tmp_path: Path) -> None:
    target = tmp_path / "mount"
    target.mkdir()
    mounter.mount_tmpfs(str(target), 1 << 20, GID)
    try:
        assert target.stat().st_gid == GID
        assert mounter.mount_group(str(target)) == GID
    finally:
        mounter.unmount(str(target))
    mounter.mount_tmpfs(str(target), 1 << 20)
    try:
        assert mounter.mount_group(str(target)) is None
    finally:
        mounter.unmount(str(target))


def test_mount_table_remembers_the_group() -> None:
    record = PodStatusRecord("p", "ns", "u", "spc", "/t/mount", "n", True, {})
    table = MountTable()
    table.add(record, GID)
    assert table.group("/t//mount") == GID
    table.refresh(record)  # new versions: the group stays
    assert table.group("/t/mount") == GID
    table.remove("/t/mount")
    assert table.group("/t/mount") is None
    table.add(record)
    assert table.group("/t/mount") is None
