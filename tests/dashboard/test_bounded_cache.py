"""What the RWC tab keeps between requests: bounded in bytes, least recently used out first."""

from __future__ import annotations

import threading

from lightning_rwc.dashboard.cache import BoundedCache


def test_the_least_recently_used_values_go_first_once_the_bound_is_passed():
    cache = BoundedCache(max_bytes=100)
    for key in "abc":
        cache.put(key, 1, key.upper(), nbytes=30)
    assert cache.get("a") == (1, "A")  # now the most recently used
    cache.put("d", 1, "D", nbytes=30)
    assert cache.get("b") is None and [cache.get(k) for k in "acd"] == [(1, "A"), (1, "C"), (1, "D")]
    assert cache.nbytes == 90


def test_a_value_larger_than_the_bound_is_not_kept_and_a_replaced_one_is_counted_once():
    cache = BoundedCache(max_bytes=100)
    cache.put("a", 1, "A", nbytes=40)
    cache.put("a", 2, "A2", nbytes=50)
    assert cache.get("a") == (2, "A2") and cache.nbytes == 50
    cache.put("huge", 1, "H", nbytes=101)
    assert cache.get("huge") is None and cache.nbytes == 50
    cache.drop(lambda key: key == "a")
    assert cache.get("a") is None and cache.nbytes == 0


def test_threads_putting_at_once_keep_the_count_and_the_bound():
    cache = BoundedCache(max_bytes=1000)

    def fill(start: int) -> None:
        for i in range(start, start + 500):
            cache.put(i % 50, i, i, nbytes=7 + i % 13)

    threads = [threading.Thread(target=fill, args=(k * 500,)) for k in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    held = [cache.get(key) for key in range(50)]
    assert cache.nbytes == sum(7 + value % 13 for item in held if item is not None for value in [item[1]])
    assert cache.nbytes <= 1000
