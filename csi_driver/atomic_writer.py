"""Writes a volume's files so readers never see a mix of old and new (kubelet's AtomicWriter).

Layout inside the target directory:

    ..2026_11_23_20_30_00.123456789/   the current payload (a timestamped directory)
    ..data -> ..2026_11_23_20_30_00.123456789
    <name> -> ..data/<name>            one user-visible symlink per top-level path

A write fills a new timestamped directory, points `..data_tmp` at it and renames that over
`..data` (rename(2) is atomic), then removes stale user-visible links and the old directory.
Every path is checked first (relative, clean, no `..`), so nothing is written outside the target.
"""

from __future__ import annotations

import itertools
import os
import shutil
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import PurePosixPath

DATA_DIR = "..data"
NEW_DATA_DIR = "..data_tmp"
MAX_PATH_LENGTH = 4096
MAX_FILE_NAME_LENGTH = 255


class PayloadError(ValueError):
    """A provider-supplied path or mode that must not be written."""


@dataclass(frozen=True)
class FileProjection:
    data: bytes
    mode: int


def validate_path(path: str) -> None:
    """Upstream's rules, with upstream's messages (pod events show them)."""
    if path == "":
        raise PayloadError(f'invalid path: must not be empty: "{path}"')
    if path.startswith("/"):
        raise PayloadError(f"invalid path: must be relative path: {path}")
    if len(path) > MAX_PATH_LENGTH:
        raise PayloadError(
            f"invalid path: must be less than or equal to {MAX_PATH_LENGTH} characters"
        )
    items = path.split("/")
    for item in items:
        if item == "..":
            raise PayloadError(f"invalid path: must not contain '..': {path}")
        if len(item.encode()) > MAX_FILE_NAME_LENGTH:
            raise PayloadError(
                "invalid path: filenames must be less than or equal to "
                f"{MAX_FILE_NAME_LENGTH} characters"
            )
    if items[0].startswith("..") and len(items[0]) > 2:
        raise PayloadError(f"invalid path: must not start with '..': {path}")
    if "\x00" in path:
        raise PayloadError(f"invalid filepath: {path!r}")
    if _clean(path) != path:
        raise PayloadError(f'invalid filepath: "{path}"')


def _clean(path: str) -> str:
    """Go's filepath.Clean for relative paths without `..` (already rejected)."""
    parts = [p for p in path.split("/") if p not in ("", ".")]
    return "/".join(parts) or "."


def validate_payload(payload: Mapping[str, FileProjection]) -> None:
    for path, projection in payload.items():
        validate_path(path)
        if not 0 <= projection.mode <= 0o777:
            raise PayloadError(f"invalid file mode {projection.mode:#o} for {path}")
    names = sorted(payload)
    for a, b in itertools.pairwise(names):
        if b.startswith(a + "/"):
            raise PayloadError(f"invalid path: {a} is both a file and a directory")


def _top(path: str) -> str:
    return path.split("/", 1)[0]


def _same_content(path: str, data: bytes) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(len(data) + 1) == data
    except FileNotFoundError:
        return False


def _should_write(
    payload: Mapping[str, FileProjection], old_dir: str, gid: int | None = None
) -> bool:
    for path, projection in payload.items():
        full = os.path.join(old_dir, path)
        if not _same_content(full, projection.data):
            return True
        try:
            st = os.stat(full)
            if st.st_mode & 0o7777 != projection.mode or (gid is not None and st.st_gid != gid):
                return True
        except FileNotFoundError:
            return True
    return False


def _existing_paths(old_dir: str) -> set[str]:
    found: set[str] = set()
    for root, dirs, files in os.walk(old_dir):
        rel_root = os.path.relpath(root, old_dir)
        for name in dirs + files:
            rel = name if rel_root == "." else f"{rel_root}/{name}"
            found.add(rel)
    return found


def _new_paths(payload: Mapping[str, FileProjection]) -> set[str]:
    result: set[str] = set()
    for path in payload:
        p = PurePosixPath(path)
        result.add(path)
        result.update(str(parent) for parent in p.parents if str(parent) != ".")
    return result


def cleanup_provider_files(target_dir: str, payload: Mapping[str, FileProjection]) -> None:
    """Remove top-level entries a provider wrote itself (not our symlinks), as upstream does."""
    for path in payload:
        entry = os.path.join(target_dir, _top(path))
        try:
            st = os.lstat(entry)
        except FileNotFoundError:
            continue
        if os.path.islink(entry):
            continue
        if os.path.isdir(entry) and not os.path.islink(entry):
            shutil.rmtree(entry)
        elif st is not None:
            os.unlink(entry)


def replace(target_dir: str, payload: Mapping[str, FileProjection], gid: int | None = None) -> bool:
    """What publish and rotation do: clear what a provider wrote itself, then write. With a
    gid (the pod's fsGroup) every file and directory written is group-owned by it; the modes
    stay the payload's (0440: the group reads, the world does not)."""
    cleanup_provider_files(target_dir, payload)
    return write(target_dir, payload, gid)


def _makedirs(ts_dir: str, rel_dir: str, gid: int | None) -> None:
    """The directories of a nested path (history `name/0`), group-owned like the files."""
    current = ts_dir
    for part in [p for p in rel_dir.split("/") if p]:
        current = os.path.join(current, part)
        if not os.path.isdir(current):
            os.mkdir(current, 0o755)
            if gid is not None:
                os.chown(current, -1, gid, follow_symlinks=False)


def _write_files(ts_dir: str, payload: Mapping[str, FileProjection], gid: int | None) -> None:
    """Each file created 0600 (never readable before its mode is set), then its group and its
    own mode."""
    for path, projection in payload.items():
        full = os.path.join(ts_dir, path)
        _makedirs(ts_dir, os.path.dirname(path), gid)
        fd = os.open(full, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            view = memoryview(projection.data)
            while view:
                n = os.write(fd, view)
                view = view[n:]
            if gid is not None:
                os.fchown(fd, -1, gid)
            os.fchmod(fd, projection.mode)
        finally:
            os.close(fd)


def _swap_in(target_dir: str, payload: Mapping[str, FileProjection], gid: int | None) -> None:
    """A new timestamped directory with the payload, its user-visible links, then `..data`
    renamed onto it (atomic); on any failure the new directory is removed."""
    prefix = time.strftime("..%Y_%m_%d_%H_%M_%S.", time.gmtime())
    ts_dir = tempfile.mkdtemp(prefix=prefix, dir=target_dir)
    try:
        os.chmod(ts_dir, 0o755)  # noqa: S103  kubelet's writer does so; each file has its own mode
        if gid is not None:
            os.chown(ts_dir, -1, gid, follow_symlinks=False)
        _write_files(ts_dir, payload, gid)
        for top in sorted({_top(p) for p in payload}):
            link = os.path.join(target_dir, top)
            if not os.path.islink(link):
                os.symlink(os.path.join(DATA_DIR, top), link)
        new_data = os.path.join(target_dir, NEW_DATA_DIR)
        if os.path.islink(new_data):
            os.unlink(new_data)
        os.symlink(os.path.basename(ts_dir), new_data)
        try:
            os.rename(new_data, os.path.join(target_dir, DATA_DIR))
        except OSError:
            os.unlink(new_data)
            raise
    except BaseException:
        shutil.rmtree(ts_dir, ignore_errors=True)
        raise


def write(target_dir: str, payload: Mapping[str, FileProjection], gid: int | None = None) -> bool:
    """Atomically replace the target's payload; returns False when nothing needed writing."""
    validate_payload(payload)
    if os.path.islink(target_dir) or not os.path.isdir(target_dir):
        raise PayloadError(f"target {target_dir} is not a directory")
    data_path = os.path.join(target_dir, DATA_DIR)
    try:
        old_ts = os.readlink(data_path)
    except FileNotFoundError:
        old_ts = ""
    old_ts_path = os.path.join(target_dir, old_ts) if old_ts else ""

    to_remove: set[str] = set()
    if old_ts:
        to_remove = _existing_paths(old_ts_path) - _new_paths(payload)
        if not to_remove and not _should_write(payload, old_ts_path, gid):
            return False

    _swap_in(target_dir, payload, gid)
    for path in to_remove:
        if "/" not in path:
            link = os.path.join(target_dir, path)
            if os.path.islink(link):
                os.unlink(link)
    if old_ts_path and os.path.basename(old_ts_path).startswith(".."):
        shutil.rmtree(old_ts_path, ignore_errors=True)
    return True
