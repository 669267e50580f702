"""A chunk whose bytes change while a store node holds it (memory or disk going bad) is detected by
the reader against the checksum its producer computed, never handed out as KV: over the socket and
when the reader copies the chunk out of the node's arena itself (in place, on the node's host)."""

from __future__ import annotations

import pytest
import torch

from kvstore import StoreClient
from tests.kvstore.procs import node_in_thread
from transfer.errors import CorruptBuffer

# how each path names the second chunk of a get that fails its checksum
SECOND = {"in place": r"\(#1\)", "socket": r"buffers\[1\]"}
FIRST = {"in place": r"\(#0\)", "socket": r"buffers\[0\]"}


@pytest.fixture(params=["in place", "socket"])
def node(request, redis_server):
    with node_in_thread(redis_server.url, "n0", capacity_bytes=1 << 20) as store_node:
        client = StoreClient(
            redis_url=redis_server.url, node_id="n0", shared_memory=request.param == "in place"
        )
        yield store_node, client, request.param
        assert (client.num_in_place > 0) == (request.param == "in place")
        client.close()


def test_a_chunk_changed_at_rest_is_refused_by_its_reader(node):
    store_node, client, path = node
    keys = [bytes([i]) * 32 for i in range(3)]
    chunks = [torch.full((4, 64), float(i)) for i in range(3)]
    assert client.put(keys, chunks) == [True, True, True]
    assert all(torch.equal(a, b) for a, b in zip(client.get(keys), chunks))
    held = store_node.pool.get(keys[1])
    store_node.pool.view(held)[100] ^= 0xFF  # one byte of the middle chunk goes bad in the arena
    with pytest.raises(CorruptBuffer, match=SECOND[path]):
        client.get(keys)
    assert torch.equal(client.get(keys[:1])[0], chunks[0])  # the others still read back intact
    assert client.delete(keys[1:2]) == 1  # what a prefill worker does with a corrupt chunk


def test_a_chunk_damaged_on_its_way_in_is_stored_as_sent_and_refused_by_its_reader(node):
    """The node keeps a put's bytes with the producer's checksum without hashing them: the
    reader's check covers the way in too (and the reader deletes what fails it)."""
    from kvstore.tensors import to_buffer
    from transfer.messages import Buffer

    _, client, path = node
    keys = [bytes([7]) * 32, bytes([8]) * 32]
    good = to_buffer(torch.ones(4, 64))
    damaged = Buffer(torch.zeros(4, 64).numpy(), good.dtype, good.shape, checksum=xxh3(good))
    assert client.put(keys, [good, damaged]) == [True, True]
    assert torch.equal(client.get(keys[:1])[0], torch.ones(4, 64))
    with pytest.raises(CorruptBuffer, match=FIRST[path]):
        client.get(keys[1:])


def xxh3(buffer) -> int:
    import xxhash

    return xxhash.xxh3_64_intdigest(buffer.data)
