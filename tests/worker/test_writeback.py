"""The chunk writer puts a worker's chunks from a thread of its own, against a real store node:
the caller never waits, a stalled node costs dropped cache entries (never a blocked loop), and
what is queued is written before the worker exits."""

from __future__ import annotations

import signal
import time

import pytest
import torch

from kvstore import StoreClient
from tests.kvstore.conftest import redis_server, start_node  # noqa: F401 (fixtures)
from tests.kvstore.procs import wait_until
from worker.counters import WorkerCounters
from worker.writeback import ChunkWriter

CHUNK = (4, 256)  # 4 KiB of float32


def batch(seed: int, n: int = 2) -> tuple[list[bytes], list[torch.Tensor]]:
    return [bytes([seed, i]) * 16 for i in range(n)], [
        torch.full(CHUNK, float(seed * 10 + i)) for i in range(n)
    ]


@pytest.fixture
def node(redis_server, start_node):  # noqa: F811
    return start_node(redis_server.url, "w0")


def test_chunks_are_written_off_the_callers_thread_and_counted(redis_server, node):  # noqa: F811
    store, counters = StoreClient(redis_server.url, node_id="w0"), WorkerCounters()
    writer = ChunkWriter(store.clone(), counters)
    try:
        keys, chunks = batch(1)
        assert writer.submit("r1", keys, chunks)
        wait_until(lambda: writer.pending == 0, 15, "the write")
        assert all(torch.equal(a, b) for a, b in zip(store.get(keys), chunks))
        assert counters.totals().store_put_bytes == 2 * 4 * 256 * 4
    finally:
        writer.close()
        store.close()


def test_a_stalled_node_drops_what_exceeds_the_budget_and_close_writes_the_rest(redis_server, node):  # noqa: F811
    store = StoreClient(redis_server.url, node_id="w0", timeout_s=30)
    writer = ChunkWriter(store.clone(), WorkerCounters(), max_pending_bytes=3 * 4 * 256 * 4)  # 3 chunks
    node.proc.send_signal(signal.SIGSTOP)  # the node stops reading: the first put waits on it
    try:
        first, second = batch(2), batch(3)
        assert writer.submit("r2", *first)
        started = time.monotonic()
        assert not writer.submit("r3", *second)  # over the budget while the first is stuck: dropped
        assert time.monotonic() - started < 1.0 and writer.num_dropped == 1 and writer.pending == 1
    finally:
        node.proc.send_signal(signal.SIGCONT)
    writer.close(timeout_s=30)  # the queued batch is written before the writer stops
    assert writer.pending == 0
    assert len(store.get(first[0])) == 2 and store.match(second[0]).anywhere == 0
    store.close()
