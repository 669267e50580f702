"""A chunk whose bytes change while a store node holds it (memory or disk going bad) is detected by
the reader against the checksum its producer computed, never handed out as KV."""

from __future__ import annotations

import threading

import pytest
import torch

from kvstore import StoreClient
from kvstore.config import StoreNodeConfig
from kvstore.node import StoreNode
from transfer.errors import CorruptBuffer


@pytest.fixture
def node(redis_server):
    config = StoreNodeConfig(
        node_id="n0", listen="tcp://127.0.0.1:0", redis_url=redis_server.url, capacity_bytes=1 << 20
    )
    node = StoreNode(config)
    stop = threading.Event()
    thread = threading.Thread(target=node.serve, args=(stop,), name="store-node")
    thread.start()
    client = StoreClient(redis_url=redis_server.url, node_id="n0")
    deadline_ok = False
    for _ in range(200):  # registered with its first heartbeat
        if client.nodes():
            deadline_ok = True
            break
        stop.wait(0.02)
    assert deadline_ok, "the node did not register"
    yield node, client
    client.close()
    stop.set()
    thread.join(timeout=10)


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
