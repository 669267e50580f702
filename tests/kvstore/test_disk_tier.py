"""A store node with a disk tier, as a real process on a real Redis: what memory evicts is kept on
disk and read back intact, the index says which tier holds what, a restarted node comes back warm,
and a chunk file that went bad is refused or dropped, never read as KV."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from kvstore import StoreClient
from kvstore.index import StoreIndex
from tests.kvstore.procs import wait_until
from tests.kvstore.test_eviction import node_state
from transfer.errors import CorruptBuffer

SLOT = 4096  # one chunk: 1024 float32
MEMORY_SLOTS = 8


def key(i: int) -> bytes:
    return b"d" + i.to_bytes(15, "big")


def chunk(i: int) -> torch.Tensor:
    return torch.arange(1024, dtype=torch.float32) + 1000 * i


@pytest.fixture
def tiered(redis_server, start_node, tmp_path):
    """``tiered(node_id)``: a node of 8 memory slots and a disk tier under tmp_path, with a client."""
    clients: list[StoreClient] = []

    def start(node_id: str = "a", **kwargs):
        node = start_node(
            redis_server.url, node_id, capacity_bytes=MEMORY_SLOTS * SLOT, chunk_bytes=SLOT,
            disk_path=tmp_path / node_id, **kwargs,
        )  # fmt: skip
        clients.append(StoreClient(redis_url=redis_server.url, node_id=node_id))
        return node, clients[-1]

    yield start
    for client in clients:
        client.close()


def tiers(redis_url: str, node_id: str, keys: list[bytes]) -> tuple[set[bytes], set[bytes]]:
    """(held, held on disk only) among ``keys``, as the index says."""
    index = StoreIndex(redis_url)
    try:
        holding = {h.node_id: h for h in index.locate(keys)}.get(node_id)
    finally:
        index.close()
    if holding is None:
        return set(), set()
    held = {k for k, h in zip(keys, holding.held) if h}
    return held, {k for k, d in zip(keys, holding.on_disk) if d}


def put_all(client: StoreClient, n: int) -> list[bytes]:
    keys = [key(i) for i in range(n)]
    for start in range(0, n, 5):
        assert client.put(keys[start : start + 5], [chunk(i) for i in range(start, start + 5)]) == [True] * 5
    return keys


def assert_exact(redis_url: str, node, keys: list[bytes]) -> set[bytes]:
    """The index's tiers agree with the node: every key held, exactly those outside memory on disk."""
    present, stats = node_state(node.address, keys)
    held, on_disk = tiers(redis_url, node.node_id, keys)
    assert present == held == set(keys)
    assert len(on_disk) == len(keys) - stats.num_chunks, (len(on_disk), stats)
    assert stats.num_chunks <= MEMORY_SLOTS
    return on_disk


def test_memory_evictions_are_kept_on_disk_and_read_back_intact(redis_server, tiered):
    node, client = tiered()
    keys = put_all(client, 40)
    on_disk = assert_exact(redis_server.url, node, keys)
    assert len(on_disk) >= 40 - MEMORY_SLOTS
    match = client.match(keys)
    assert (match.anywhere, match.on_disk) == (40, len(on_disk))

    # One get of all 40: more than memory holds at once, so most are read into buffers of their own.
    got = client.get(keys)
    assert all(torch.equal(g, chunk(i)) for i, g in enumerate(got))
    _, stats = node_state(node.address, keys)
    assert stats.disk_hits >= len(on_disk) and stats.disk_chunks == 40 and stats.misses == 0
    assert_exact(redis_server.url, node, keys)  # promotions and the evictions they caused published

    info = {n.node_id: n for n in client.nodes()}["a"]
    assert info.disk_chunks == 40 and info.disk_bytes_used > 40 * SLOT and info.disk_capacity_bytes == 1 << 30


def test_a_node_stopped_and_restarted_on_its_path_comes_back_with_every_chunk(redis_server, tiered):
    node, client = tiered()
    keys = put_all(client, 20)
    assert node.stop() == 0  # a clean stop keeps memory's chunks on disk too
    assert tiers(redis_server.url, "a", keys) == (set(), set())  # deregistered meanwhile

    node, client = tiered()
    assert tiers(redis_server.url, "a", keys) == (set(keys), set(keys))
    assert all(torch.equal(g, chunk(i)) for i, g in enumerate(client.get(keys)))
    assert_exact(redis_server.url, node, keys)


def test_a_node_killed_comes_back_with_what_it_had_on_disk(redis_server, tiered):
    node, client = tiered()
    keys = put_all(client, 20)
    _, on_disk = tiers(redis_server.url, "a", keys)
    node.kill()  # a crash: memory is lost, the files stay
    wait_until(lambda: "a" not in {n.node_id for n in client.nodes()}, 10, "the dead node's lease to lapse")
    node, client = tiered()
    held, now_on_disk = tiers(redis_server.url, "a", keys)
    assert held == now_on_disk == on_disk
    survivors = [i for i, k in enumerate(keys) if k in held]
    got = client.get([keys[i] for i in survivors])
    assert all(torch.equal(g, chunk(i)) for i, g in zip(survivors, got))


def test_a_chunk_file_changed_or_cut_on_disk_is_never_read_as_kv(redis_server, tiered, tmp_path: Path):
    node, client = tiered()
    keys = put_all(client, 20)
    _, on_disk = tiers(redis_server.url, "a", keys)
    changed, cut = sorted(on_disk)[:2]
    with open(tmp_path / "a" / f"{changed.hex()}.kv", "r+b") as f:  # one byte of the KV goes bad
        f.seek(-10, 2)
        byte = f.read(1)
        f.seek(-10, 2)
        f.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(CorruptBuffer):
        client.get([changed])
    assert client.delete([changed]) == 1  # what a prefill worker does with a corrupt chunk

    with open(tmp_path / "a" / f"{cut.hex()}.kv", "r+b") as f:
        f.truncate(SLOT // 2)
    with pytest.raises(KeyError, match="evicted"):
        client.get([cut])
    held, _ = tiers(redis_server.url, "a", keys)
    assert held == set(keys) - {changed, cut}  # both gone from the index, the rest intact
    rest = [i for i, k in enumerate(keys) if k in held]
    assert all(torch.equal(g, chunk(i)) for i, g in zip(rest, client.get([keys[i] for i in rest])))
