"""A chunk whose bytes change while a store node holds it (memory or disk going bad) is detected by
the reader against the checksum its producer computed, never handed out as KV."""

from __future__ import annotations

import pytest
import torch

from kvstore import StoreClient
from tests.kvstore.procs import node_in_thread
from transfer.errors import CorruptBuffer


@pytest.fixture
def node(redis_server):
    with node_in_thread(redis_server.url, "n0", capacity_bytes=1 << 20) as store_node:
        client = StoreClient(redis_url=redis_server.url, node_id="n0")
        yield store_node, client
        client.close()


def test_a_chunk_changed_at_rest_is_refused_by_its_reader(node):
    store_node, client = node
    keys = [bytes([i]) * 32 for i in range(3)]
    chunks = [torch.full((4, 64), float(i)) for i in range(3)]
    assert client.put(keys, chunks) == [True, True, True]
    assert all(torch.equal(a, b) for a, b in zip(client.get(keys), chunks))
    held = store_node.pool.get(keys[1])
    store_node.pool.view(held)[100] ^= 0xFF  # one byte of the middle chunk goes bad in the arena
    with pytest.raises(CorruptBuffer, match=r"buffers\[1\]"):
        client.get(keys)
    assert torch.equal(client.get(keys[:1])[0], chunks[0])  # the others still read back intact
    assert client.delete(keys[1:2]) == 1  # what a prefill worker does with a corrupt chunk
