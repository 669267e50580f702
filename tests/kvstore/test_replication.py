"""Hot-chunk replication: which keys count as hot, which copy a reader picks, and, between real
node processes on a real Redis, a hot chunk copied to a second node that serves it when the first
one dies."""

from __future__ import annotations

import torch

from kvstore import StoreClient
from kvstore.client import _assign
from kvstore.index import Holding
from kvstore.replication import HotChunks
from tests.kvstore.procs import wait_until


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_key_is_hot_past_the_threshold_within_the_window_and_copied_once_a_while():
    clock = Clock()
    hot = HotChunks(threshold=3, window_s=10, clock=clock)
    assert [hot.record([b"k"]) for _ in range(3)] == [[], [], []]
    assert hot.record([b"k", b"other"]) == [b"k"]  # the 4th fetch within 10 s
    assert hot.record([b"k"]) == []  # being copied: not again
    clock.now = 50.0  # 4 fetches spread over the window do not make a key hot
    for step in range(4):
        clock.now += 4.0
        assert hot.record([b"spread"]) == [], step
    clock.now = 200.0  # ten windows later, still hot: copied again (its copy may have been evicted)
    assert [hot.record([b"k"]) for _ in range(4)] == [[], [], [], [b"k"]]


def test_readers_prefer_their_own_node_then_memory_then_spread_over_the_copies():
    keys = [b"k0", b"k1"]
    a = Holding("a", "tcp://a", (True, True), (False, True))  # k1 on a's disk only
    b = Holding("b", "tcp://b", (True, True), (False, False))
    assert set(_assign(keys, [a, b], "a")) == {"a"}  # its own node, even from disk
    for spread in range(32):  # memory beats disk for k1, whichever copy of k0 the client reads
        assert 1 in _assign(keys, [a, b], None, bytes([spread]))["b"][1]
    picks = {next(iter(_assign(keys[:1], [a, b], None, bytes([i])))) for i in range(32)}
    assert picks == {"a", "b"}, "different clients should read different copies of k0"
    one_client = {next(iter(_assign(keys[:1], [a, b], None, b"same"))) for _ in range(8)}
    assert len(one_client) == 1


def test_a_hot_chunk_gets_a_second_copy_that_serves_when_its_node_dies(redis_server, start_node):
    url = redis_server.url
    replicating = ("--replicate-after", "3", "--replicate-window-s", "30")
    first = start_node(url, "a", extra=replicating)
    start_node(url, "b", extra=replicating)
    writer, reader = StoreClient(url, node_id="a"), StoreClient(url)
    key, chunk = b"hot-system-prompt", torch.arange(4096, dtype=torch.float32)
    try:
        assert writer.put([key], [chunk]) == [True]
        for _ in range(4):  # the 4th fetch within the window makes it hot
            assert torch.equal(reader.get([key])[0], chunk)
        wait_until(lambda: reader.locate([key]) == [["a", "b"]], 10, "a copy of the hot chunk on node b")
        wait_until(
            lambda: {n.node_id: n.num_replicated for n in reader.nodes()}["a"] == 1, 10, "a to count it"
        )
        assert reader.match([key]).anywhere == 1
        first.kill()
        wait_until(lambda: reader.locate([key]) == [["b"]], 10, "a's lease to lapse")
        assert torch.equal(reader.get([key])[0], chunk)  # read from the copy, checked by its checksum
    finally:
        writer.close()
        reader.close()
