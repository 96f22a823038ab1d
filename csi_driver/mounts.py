"""This node's mount table: what the driver mounted where, and one lock per target path.

Publish, unpublish and rotation's file swap take a target's lock; a second operation on the
same target while one is in flight is refused (OperationPending, gRPC ABORTED, as the CSI spec
asks) rather than queued. Target paths compare after lexical normalisation.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterator
from contextlib import contextmanager

from .errors import OperationPending
from .spcps import PodStatusRecord


def target_key(target: str) -> str:
    """Target paths compare after lexical normalisation (no filesystem access)."""
    return posixpath.normpath(target)


class MountTable:
    """Target path → the SPCPS record of what is mounted there; rebuilt from SPCPS on start."""

    def __init__(self) -> None:
        self._records: dict[str, PodStatusRecord] = {}
        self._groups: dict[str, int] = {}  # target → the pod's fsGroup, for every rewrite
        self._busy: set[str] = set()

    def __contains__(self, target: object) -> bool:
        return isinstance(target, str) and target_key(target) in self._records

    def __len__(self) -> int:
        return len(self._records)

    def get(self, target: str) -> PodStatusRecord | None:
        return self._records.get(target_key(target))

    def records(self) -> list[PodStatusRecord]:
        return list(self._records.values())

    def targets(self) -> set[str]:
        return set(self._records)

    def add(self, record: PodStatusRecord, group: int | None = None) -> None:
        key = target_key(record.target_path)
        self._records[key] = record
        if group is None:
            self._groups.pop(key, None)
        else:
            self._groups[key] = group

    def group(self, target: str) -> int | None:
        """The gid files of this mount are owned by (the pod's fsGroup); None: no fsGroup."""
        return self._groups.get(target_key(target))

    def refresh(self, record: PodStatusRecord) -> bool:
        """Replace the record of a target still mounted; False when it was unpublished."""
        key = target_key(record.target_path)
        if key not in self._records:
            return False
        self._records[key] = record
        return True

    def remove(self, target: str) -> None:
        self._records.pop(target_key(target), None)
        self._groups.pop(target_key(target), None)

    @contextmanager
    def lock(self, target: str) -> Iterator[None]:
        """Exclusive use of one target path; OperationPending if it is in use."""
        key = target_key(target)
        if key in self._busy:
            raise OperationPending(f"an operation on target path {target} is already in progress")
        self._busy.add(key)
        try:
            yield
        finally:
            self._busy.discard(key)
