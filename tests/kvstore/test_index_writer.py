"""The node's index writer against a real Redis: order, one transaction per backlog, wake-ups,
errors handed to the requests that caused them."""

from __future__ import annotations

import select
import threading

import pytest

from kvstore.index import IndexDelta, StoreIndex
from kvstore.index_writer import IndexWriter
from kvstore.types import IndexUnavailable

STATS = {"capacity_bytes": 100, "bytes_used": 0, "num_chunks": 0}


class GatedIndex(StoreIndex):
    """A real index whose first ``publish_batch`` waits for ``gate``; records every batch."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.entered, self.gate = threading.Event(), threading.Event()
        self.batches: list[list[IndexDelta]] = []

    def publish_batch(self, node_id, deltas, stats) -> None:
        self.batches.append(list(deltas))
        self.entered.set()
        assert self.gate.wait(30), "the test never opened the gate"
        super().publish_batch(node_id, deltas, stats)


def readable(fd: int, timeout_s: float) -> bool:
    return bool(select.select([fd], [], [], timeout_s)[0])


def test_changes_queued_behind_a_transaction_go_out_together_and_in_order(redis_server):
    index = GatedIndex(redis_server.url)
    index.register("n", "tcp://127.0.0.1:1", 10, [b"old"], STATS)
    writer = IndexWriter(index, "n")
    try:
        first = writer.submit(IndexDelta([b"k1"], [b"old"]), STATS)
        assert index.entered.wait(30)  # the writer is inside the first transaction
        queued = [
            writer.submit(IndexDelta([], [b"k1"]), STATS),  # removed again before the first lands
            writer.submit(IndexDelta([b"k2", b"k3"], [], on_disk=[b"k3"]), STATS),
            writer.submit(IndexDelta([b"k1"], []), STATS | {"num_chunks": 3}),  # and back
        ]
        assert not first.done and not readable(writer.fileno(), 0)
        index.gate.set()
        writer.flush()
        assert all(t.done and t.error is None for t in [first, *queued])
        assert [len(batch) for batch in index.batches] == [1, 3]
        assert index.held_keys("n") == {b"k1", b"k2", b"k3"}
        (holding,) = index.locate([b"k1", b"k2", b"k3"])
        assert holding.on_disk == (False, False, True)
        assert index.nodes()[0].num_chunks == 3  # the counters of the last change
        assert readable(writer.fileno(), 5)
        writer.clear_wakeups()
        assert not readable(writer.fileno(), 0)
    finally:
        index.gate.set()
        writer.close()


def test_an_unreachable_index_fails_each_ticket_and_the_writer_carries_on(redis_server):
    writer = IndexWriter(StoreIndex(redis_server.url), "n")
    try:
        redis_server.stop()
        ticket = writer.submit(IndexDelta([b"k"], []), STATS)
        writer.flush()
        assert ticket.done and isinstance(ticket.error, IndexUnavailable)
        assert readable(writer.fileno(), 5)
        redis_server.start()  # same port, empty
        again = writer.submit(IndexDelta([b"k"], []), STATS)
        writer.flush()
        assert again.done and again.error is None
        assert writer.index.held_keys("n") == {b"k"}
    finally:
        writer.close()
    with pytest.raises(RuntimeError, match="closed"):
        writer.submit(IndexDelta([], []), STATS)
