"""One bounded LRU map for every cache in the provider, counted for the metrics endpoint.

Each cache has a name, a limit on entries and a limit on bytes (as its `weigh` function counts
them); putting past either evicts the least recently used entries and returns them, so the
owner can close what it evicted. metrics.py exports each watched cache's evictions and size.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class BoundedLRU(Generic[K, V]):
    """Thread-safe: the parse cache is filled from worker threads."""

    def __init__(
        self,
        name: str,
        max_entries: int,
        max_bytes: int = 0,
        weigh: Callable[[K, V], int] = lambda k, v: 0,
    ) -> None:
        self.name = name
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._weigh = weigh
        self._items: OrderedDict[K, tuple[V, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.evictions = 0

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[K]:
        return iter(list(self._items))

    @property
    def bytes(self) -> int:
        return self._bytes

    def get(self, key: K) -> V | None:
        with self._lock:
            entry = self._items.get(key)
            if entry is None:
                return None
            self._items.move_to_end(key)
            return entry[0]

    def put(self, key: K, value: V) -> list[tuple[K, V]]:
        """Store `value`; the entries evicted to make room (possibly `value` itself, when it
        alone is over the byte limit: then it is not kept)."""
        weight = self._weigh(key, value)
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._bytes -= old[1]
            self._items[key] = (value, weight)
            self._bytes += weight
            return self._shrink()

    def pop(self, key: K) -> V | None:
        with self._lock:
            entry = self._items.pop(key, None)
            if entry is None:
                return None
            self._bytes -= entry[1]
            return entry[0]

    def clear(self) -> list[tuple[K, V]]:
        with self._lock:
            items = [(k, v) for k, (v, _) in self._items.items()]
            self._items.clear()
            self._bytes = 0
            return items

    def _shrink(self) -> list[tuple[K, V]]:
        evicted: list[tuple[K, V]] = []
        while self._items and (
            len(self._items) > self.max_entries or (self.max_bytes and self._bytes > self.max_bytes)
        ):
            key, (value, weight) = self._items.popitem(last=False)
            self._bytes -= weight
            evicted.append((key, value))
        self.evictions += len(evicted)
        return evicted
