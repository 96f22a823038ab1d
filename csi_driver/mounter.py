"""tmpfs mounts through mount(2)/umount2(2) directly: no `mount` process per publish."""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os

MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MNT_DETACH = 0x2
UMOUNT_NOFOLLOW = 0x8

_libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_libc.mount.argtypes = [
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_ulong,
    ctypes.c_char_p,
]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]


def mount_tmpfs(target: str, size_bytes: int, gid: int | None = None) -> None:
    """Mount a size-capped tmpfs with nosuid,nodev,noexec at target (an existing directory);
    with a gid (the pod's fsGroup) its root is group-owned by it."""
    options = f"size={size_bytes},mode=0755{'' if gid is None else f',gid={gid}'}".encode()
    flags = MS_NOSUID | MS_NODEV | MS_NOEXEC
    if _libc.mount(b"tmpfs", target.encode(), b"tmpfs", flags, options) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount tmpfs on {target}: {os.strerror(err)}")


def unmount(target: str) -> None:
    """Unmount target without following a symlink; lazily if busy."""
    path = target.encode()
    if _libc.umount2(path, UMOUNT_NOFOLLOW) == 0:
        return
    err = ctypes.get_errno()
    if err == errno.EBUSY and _libc.umount2(path, UMOUNT_NOFOLLOW | MNT_DETACH) == 0:
        return
    err = ctypes.get_errno() if err == errno.EBUSY else err
    raise OSError(err, f"unmount {target}: {os.strerror(err)}")


def _unescape(field: str) -> str:
    """Decode mountinfo's octal escapes (\\040 for a space)."""
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and len(field[i + 1 : i + 4]) == 3 and field[i + 1 : i + 4].isdigit():
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def mount_points() -> dict[str, str]:
    """Mount point → filesystem type, from /proc/self/mountinfo (last mount wins)."""
    result: dict[str, str] = {}
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fields = left.split()
            if len(fields) < 5:
                continue
            fstype = right.split(" ", 1)[0]
            result[_unescape(fields[4])] = fstype
    return result


def mount_options(target: str) -> tuple[str, str] | None:
    """(per-mount options, super options) of the mount at target, if any."""
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
        found = None
        for line in f:
            left, _, right = line.partition(" - ")
            fields = left.split()
            if len(fields) >= 6 and _unescape(fields[4]) == target:
                found = (fields[5], right.split()[2] if len(right.split()) > 2 else "")
        return found


def is_mount_point(target: str) -> bool:
    """True when target is a mount point; the path itself must exist (raises otherwise)."""
    st = os.lstat(target)
    if not os.path.isdir(target) or os.path.islink(target):
        return False
    parent = os.lstat(os.path.dirname(os.path.abspath(target)) or "/")
    if st.st_dev != parent.st_dev or st.st_ino == parent.st_ino:
        return True
    return os.path.abspath(target) in mount_points()


def mount_group(target: str) -> int | None:
    """The gid= option of the tmpfs at target (a restarted driver's memory of the fsGroup)."""
    found = mount_options(target)
    if found is None:
        return None
    for option in found[1].split(","):
        key, _, value = option.partition("=")
        if key == "gid" and value.isdigit():
            return int(value)
    return None
