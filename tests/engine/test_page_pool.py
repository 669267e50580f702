"""Page pool and prefix cache: refcounts, LRU reuse, eviction, collision re-check."""

from __future__ import annotations

import pytest

from engine.page_pool import PagePool


def test_allocate_release_and_exhaustion():
    pool = PagePool(num_pages=4, page_size=2)
    a = pool.allocate(3)
    assert len(set(a)) == 3 and pool.num_free_pages == 1
    assert pool.allocate(2) is None and pool.num_free_pages == 1, "a failed allocation takes nothing"
    pool.release(a)
    assert pool.num_free_pages == 4


def test_cached_pages_survive_release_and_are_found_again():
    pool = PagePool(num_pages=3, page_size=2)
    (p,) = pool.allocate(1)
    pool.register(p, b"k0", [1, 2])
    pool.release([p])
    assert pool.num_free_pages == 3  # reusable, but still cached
    assert pool.lookup([b"k0"], [[1, 2]]) == [p]
    pool.acquire([p])
    assert pool.refcount[p] == 1 and pool.num_free_pages == 2


def test_lookup_stops_at_first_miss_and_rechecks_tokens():
    pool = PagePool(num_pages=4, page_size=2)
    pages = pool.allocate(3)
    for i, p in enumerate(pages):
        pool.register(p, f"k{i}".encode(), [i, i])
    assert pool.lookup([b"k0", b"k1", b"k2"], [[0, 0], [1, 1], [2, 2]]) == pages
    assert pool.lookup([b"k0", b"zz", b"k2"], [[0, 0], [1, 1], [2, 2]]) == pages[:1]
    # Same key, different tokens: a hash collision must read as a miss.
    assert pool.lookup([b"k0", b"k1"], [[0, 0], [9, 9]]) == pages[:1]


def test_eviction_is_lru_and_unregisters():
    pool = PagePool(num_pages=2, page_size=1)
    a, b = pool.allocate(2)
    pool.register(a, b"a", [1])
    pool.register(b, b"b", [2])
    pool.release([a])
    pool.release([b])
    pool.acquire(pool.lookup([b"a"], [[1]]))  # touch a: b is now least recently used
    pool.release([a])
    (c,) = pool.allocate(1)
    assert c == b and pool.num_evictions == 1
    assert pool.lookup([b"b"], [[2]]) == [] and pool.lookup([b"a"], [[1]]) == [a]


def test_shared_pages_are_refcounted():
    pool = PagePool(num_pages=2, page_size=1)
    (p,) = pool.allocate(1)
    pool.register(p, b"x", [7])
    pool.acquire([p])
    pool.release([p])
    assert pool.refcount[p] == 1 and pool.num_free_pages == 1
    pool.release([p])
    with pytest.raises(AssertionError):
        pool.release([p])


def test_duplicate_key_keeps_the_first_page():
    pool = PagePool(num_pages=2, page_size=1)
    a, b = pool.allocate(2)
    pool.register(a, b"k", [1])
    pool.register(b, b"k", [1])
    pool.release([b])
    assert pool.num_free_pages == 1 and pool.lookup([b"k"], [[1]]) == [a]
