"""LRU chunk caches and the store index's longest-prefix answers."""

from __future__ import annotations

from sim.caches import LruCache, StoreIndex


def test_lru_evicts_the_least_recently_used_and_hits_refresh():
    evicted = []
    cache = LruCache(3, on_evict=evicted.append)
    cache.insert([1, 2, 3])
    assert cache.prefix_hits([1]) == 1  # 1 is now the most recent
    cache.insert([4])
    assert evicted == [2] and 2 not in cache and 1 in cache
    cache.insert([5, 6])
    assert evicted == [2, 3, 1] and len(cache) == 3 and cache.num_evicted == 3


def test_prefix_hits_stop_at_the_first_miss():
    cache = LruCache(10)
    cache.insert([1, 2, 4])
    assert cache.prefix_hits([1, 2, 3, 4]) == 2
    assert cache.prefix_hits([3, 1, 2]) == 0
    assert cache.prefix_hits([], touch=False) == 0


def test_a_zero_capacity_cache_holds_nothing():
    cache = LruCache(0)
    cache.insert([1, 2])
    assert len(cache) == 0 and cache.prefix_hits([1]) == 0


def test_the_index_answers_per_node_prefixes_and_the_prefix_held_between_them():
    index = StoreIndex()
    index.add_node("a", 10)
    index.add_node("b", 10)
    index.put("a", [1, 2])
    index.put("b", [1, 2, 3])
    index.put("a", [4])
    # chain 1,2,3,4,5: a holds 1,2 (and 4 after a gap), b holds 1,2,3; together 1..4
    per_node, anywhere = index.match([1, 2, 3, 4, 5])
    assert per_node == {"a": 2, "b": 3} and anywhere == 4
    assert index.match([9, 1]) == ({}, 0)


def test_an_evicted_chunk_leaves_the_index():
    index = StoreIndex()
    index.add_node("a", 2)
    index.put("a", [1, 2])
    index.fetch([1])  # 1 was read: 2 is now the least recently used
    index.put("a", [3])
    assert index.match([1]) == ({"a": 1}, 1)
    assert index.match([2]) == ({}, 0)
