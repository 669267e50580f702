"""Acceptance 2: eviction keeps the index exact, and a chunk being read is never evicted."""

from __future__ import annotations

import random

import pytest

from kvstore import StoreClient
from kvstore.index import StoreIndex
from tests.kvstore.procs import wait_until
from tests.kvstore.zmtp import SlowDealer
from transfer import RequestClient
from transfer.messages import ExistsRequest, GetReply, GetRequest, StatsReply, StatsRequest
from transfer.wire import decode, encode

SLOT_BYTES = 1024
NUM_SLOTS = 64


def key(i: int) -> bytes:
    return i.to_bytes(16, "big")


def node_state(address: str, keys: list[bytes]) -> tuple[set[bytes], StatsReply]:
    """What a node really holds among ``keys``, asked of the node itself, and its stats."""
    client = RequestClient(address)
    try:
        present = client.request(ExistsRequest(tuple(keys)), timeout_s=10).present
        stats = client.request(StatsRequest(), timeout_s=10)
    finally:
        client.close()
    return {k for k, p in zip(keys, present) if p}, stats


def test_index_stays_exact_through_thousands_of_puts_and_evictions(redis_server, start_node):
    nodes = [
        start_node(
            redis_server.url, n, capacity_bytes=NUM_SLOTS * SLOT_BYTES, slot_bytes=SLOT_BYTES, wait=False
        )
        for n in ("a", "b")
    ]
    for node in nodes:
        node.address = node.wait_registered()
    clients = {n.node_id: StoreClient(redis_url=redis_server.url, node_id=n.node_id) for n in nodes}
    rng = random.Random(0)
    num_keys, batch = 3000, 50
    all_keys = [key(i) for i in range(num_keys)]
    try:
        for start in range(0, num_keys, batch):
            client = clients[rng.choice("ab")]
            client.put(all_keys[start : start + batch], [bytes([start % 251]) * SLOT_BYTES] * batch)
            # re-read some older keys, so LRU order is not insertion order
            sample = rng.sample(all_keys[: start + batch], 20)
            held = [k for k, holders in zip(sample, client.locate(sample)) if holders]
            client.get(held)

        index = StoreIndex(redis_server.url)
        for node in nodes:
            held, stats = node_state(node.address, all_keys)
            indexed = index.held_keys(node.node_id)
            assert indexed == held, f"{node.node_id}: index and node disagree on {len(indexed ^ held)} keys"
            assert stats.num_chunks == len(held) <= int(0.9 * NUM_SLOTS)
            assert stats.num_evicted > 0 and stats.num_pinned == 0
        total_held = sum(len(index.held_keys(n.node_id)) for n in nodes)
        evicted = sum(node_state(n.address, [])[1].num_evicted for n in nodes)
        assert total_held + evicted == num_keys  # every key put is held or was evicted, once
        index.close()
    finally:
        for client in clients.values():
            client.close()


def test_a_chunk_being_read_is_not_evicted_and_its_slot_not_reused(redis_server, start_node):
    slot = 16 << 20  # more than the kernel buffers a stalled read can absorb
    node = start_node(redis_server.url, "a", capacity_bytes=4 * slot, slot_bytes=slot)
    client = StoreClient(redis_url=redis_server.url, node_id="a")
    admin = RequestClient(node.address)
    pinned_key, pattern = key(10**6), bytes(range(256)) * (slot // 256)
    try:
        client.put([pinned_key], [pattern])

        reader = SlowDealer(node.address)
        reader.send_multipart(encode(GetRequest((pinned_key,)), msg_id=1))
        reader.read_some(4096)  # the reply has started to flow, then the reader stalls
        wait_until(lambda: admin.request(StatsRequest(), 10).num_pinned == 1, 2, "the read to pin the chunk")

        for i in range(6):  # far more than fits: everything else gets evicted, the pinned chunk stays
            assert client.put([key(i)], [bytes([i]) * slot]) == [True]
        assert admin.request(ExistsRequest((pinned_key,)), 10).present == (True,)
        assert client.match_prefix([pinned_key]) == {"a": 1}
        stats = admin.request(StatsRequest(), 10)
        assert stats.num_evicted >= 3 and stats.num_pinned == 1

        assert client.delete([pinned_key]) == 1  # deleting it must not free the slot mid-read either
        for i in range(6, 10):
            assert client.put([key(i)], [bytes([i]) * slot]) == [True]

        reply = decode(reader.recv_multipart()).message
        assert isinstance(reply, GetReply) and reply.found == (True,)
        assert bytes(reply.buffers[0].data) == pattern  # intact: the slot was not overwritten
        reader.close()
        wait_until(lambda: admin.request(StatsRequest(), 10).num_pinned == 0, 10, "the pin to be released")
        assert client.match_prefix([pinned_key]) == {}
    finally:
        admin.close()
        client.close()


def test_a_reader_that_stops_reading_loses_its_pin_when_the_lease_ends(redis_server, start_node):
    slot = 16 << 20
    node = start_node(redis_server.url, "a", capacity_bytes=2 * slot, slot_bytes=slot, read_lease_s=1.0)
    admin = RequestClient(node.address)
    try:
        with StoreClient(redis_url=redis_server.url) as client:
            client.put([key(1)], [bytes(slot)])
        reader = SlowDealer(node.address)
        reader.send_multipart(encode(GetRequest((key(1),)), msg_id=1))
        reader.read_some(4096)
        wait_until(lambda: admin.request(StatsRequest(), 10).num_pinned == 1, 10, "the read to pin the chunk")
        wait_until(
            lambda: admin.request(StatsRequest(), 10).num_pinned == 0, 20, "the lease to release the pin"
        )
        with pytest.raises(ConnectionError):  # the stalled reader was disconnected
            reader.recv_multipart()
        reader.close()
    finally:
        admin.close()


def test_a_batch_larger_than_the_store_keeps_its_chain_head(redis_server, start_node):
    high_water = int(0.9 * NUM_SLOTS)
    start_node(redis_server.url, "a", capacity_bytes=NUM_SLOTS * SLOT_BYTES, slot_bytes=SLOT_BYTES)
    chain = [key(i) for i in range(200)]
    with StoreClient(redis_url=redis_server.url) as client:  # no node_id: the node with most room
        # Each chunk is pinned while written, so one batch can fill the headroom, not evict itself.
        assert client.put(chain, [bytes(SLOT_BYTES)] * 200) == [True] * NUM_SLOTS + [False] * (
            200 - NUM_SLOTS
        )
        assert client.match_prefix(chain) == {"a": NUM_SLOTS}
        client.put([key(10**6)], [bytes(SLOT_BYTES)])  # the next put evicts below the watermark...
        (info,) = client.nodes()
        assert info.num_chunks == high_water and info.bytes_used == high_water * SLOT_BYTES
        assert client.match_prefix(chain) == {"a": high_water - 1}  # ...from the chain's tail
