"""What the RWC tab keeps between requests, within a bound on its bytes: least recently used out first."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Hashable
from typing import Any


class BoundedCache:
    """Values by key, each with the version it was made for, holding at most ``max_bytes`` (as their makers count).

    A value larger than the whole bound is not kept. Safe to use from several threads.

    Example::

        >>> cache = BoundedCache(max_bytes=100)
        >>> cache.put("a", 1, "A", nbytes=60)
        >>> cache.put("b", 1, "B", nbytes=60)  # "a" goes: 120 bytes would pass the bound
        >>> cache.get("a"), cache.get("b"), cache.nbytes
        (None, (1, 'B'), 60)
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.nbytes = 0
        """The bytes held now."""
        self._items: OrderedDict[Hashable, tuple[Any, Any, int]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> tuple[Any, Any] | None:
        """``(version, value)`` kept under ``key`` (now the most recently used), or ``None``."""
        with self._lock:
            item = self._items.get(key)
            if item is None:
                return None
            self._items.move_to_end(key)
            return item[0], item[1]

    def put(self, key: Hashable, version: Any, value: Any, nbytes: int) -> None:
        """Keep ``value`` under ``key`` (replacing what was there), then drop the least recently used past the bound."""
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self.nbytes -= old[2]
            if nbytes > self.max_bytes:
                return
            self._items[key] = (version, value, nbytes)
            self.nbytes += nbytes
            while self.nbytes > self.max_bytes:
                _, (_, _, dropped) = self._items.popitem(last=False)
                self.nbytes -= dropped

    def drop(self, match: Any) -> None:
        """Forget every value whose key ``match(key)`` accepts."""
        with self._lock:
            for key in [key for key in self._items if match(key)]:
                self.nbytes -= self._items.pop(key)[2]
