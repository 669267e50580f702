"""The Redis index on its own, against a real Redis: exactness, leases, reaping, Redis restarts."""

from __future__ import annotations

import time

import pytest

from kvstore.embedded_redis import EmbeddedRedis
from kvstore.index import StoreIndex
from kvstore.types import IndexUnavailable

STATS = {"capacity_bytes": 100, "bytes_used": 10, "num_chunks": 1, "hits": 2, "misses": 3, "num_evicted": 4}


@pytest.fixture
def index(redis_server):
    idx = StoreIndex(redis_server.url)
    yield idx
    idx.close()


def test_register_publish_locate_and_nodes(index):
    index.register("a", "tcp://127.0.0.1:1", 10, [b"k1", b"k2"], STATS)
    index.register("b", "tcp://127.0.0.1:2", 10, [b"k2"], STATS)
    assert [(h.node_id, h.held) for h in index.locate([b"k1", b"k2", b"k3"])] == [
        ("a", (True, True, False)),
        ("b", (False, True, False)),
    ]
    index.publish("a", added=[b"k3"], removed=[b"k1"], stats=STATS | {"num_chunks": 2})
    assert index.held_keys("a") == {b"k2", b"k3"}
    a, b = index.nodes()
    assert (a.node_id, a.address, a.num_chunks, a.hits, a.free_bytes) == ("a", "tcp://127.0.0.1:1", 2, 2, 90)
    assert b.node_id == "b"
    index.deregister("a")
    assert [n.node_id for n in index.nodes()] == ["b"] and index.held_keys("a") == set()
    assert index.locate([]) == []


def test_locate_handles_chains_longer_than_one_script_call(index):
    keys = [i.to_bytes(16, "big") for i in range(10_000)]
    index.register("a", "tcp://127.0.0.1:1", 10, keys[:9_000], STATS)
    (holding,) = index.locate(keys)
    assert holding.held == tuple([True] * 9_000 + [False] * 1_000)


def test_a_lapsed_node_is_invisible_then_reaped_and_must_register_again(index):
    index.register("a", "tcp://127.0.0.1:1", 0.2, [b"k"], STATS)
    index.register("b", "tcp://127.0.0.1:2", 30, [b"k"], STATS)
    assert index.heartbeat("a", 0.2, STATS) is True
    time.sleep(0.4)
    assert [h.node_id for h in index.locate([b"k"])] == ["b"]
    assert [n.node_id for n in index.nodes()] == ["b"]
    assert index.reap() == ["a"]
    assert index.held_keys("a") == set() and index.reap() == []
    assert index.heartbeat("a", 0.2, STATS) is False  # the node must republish in full


def test_redis_restart_loses_registrations_and_errors_are_index_unavailable(
    redis_server: EmbeddedRedis, index
):
    index.register("a", "tcp://127.0.0.1:1", 30, [b"k"], STATS)
    redis_server.stop()
    with pytest.raises(IndexUnavailable, match=f"store index at {index.url} unavailable"):
        index.locate([b"k"])
    redis_server.start()  # same port, empty
    assert index.heartbeat("a", 30, STATS) is False
    index.register("a", "tcp://127.0.0.1:1", 30, [b"k"], STATS)
    assert [h.node_id for h in index.locate([b"k"])] == ["a"]
