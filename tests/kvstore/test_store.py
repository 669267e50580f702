"""Acceptance 1: chunks put through store nodes (separate processes) are read back byte-identical
by a client in another process, and match_prefix is exact over two nodes."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from kvstore import StoreClient
from kvstore.keys import chain_keys
from kvstore.types import StoreError
from tests.kvstore.procs import REPO
from tests.kvstore.read_chunks import describe

FINGERPRINT = b"test-model-fingerprint"
PAGE, CHUNK_TOKENS = 4, 8
KV_SHAPE = (2, 2, 2, CHUNK_TOKENS // PAGE, PAGE, 8)  # [L, 2, Hk, n_pages, page_size, D]
SLOT_BYTES = 4096


def chain(tokens: list[int]) -> list[bytes]:
    return chain_keys(tokens, CHUNK_TOKENS, FINGERPRINT)


@pytest.fixture
def two_nodes(redis_server, start_node):
    nodes = [start_node(redis_server.url, n, slot_bytes=SLOT_BYTES, wait=False) for n in ("a", "b")]
    for node in nodes:  # started together, so their start-up overlaps
        node.wait_registered()
    clients = {n: StoreClient(redis_url=redis_server.url, node_id=n) for n in ("a", "b")}
    yield clients
    for c in clients.values():
        c.close()


def test_chunks_come_back_byte_identical_in_another_process(redis_server, two_nodes):
    keys = chain(list(range(6 * CHUNK_TOKENS)))
    torch.manual_seed(0)
    chunks = [
        torch.randn(KV_SHAPE).to(torch.bfloat16),
        torch.randn(KV_SHAPE).to(torch.float16),
        torch.randn(KV_SHAPE),
        torch.randint(0, 255, (4096,), dtype=torch.uint8),
        torch.randn(3, 5, dtype=torch.float64).t(),  # non-contiguous: stored contiguous
        bytes(range(256)) * 4,  # a plain buffer comes back as uint8
    ]
    assert two_nodes["a"].put(keys[:3], chunks[:3]) == [True] * 3
    assert two_nodes["b"].put(keys[3:], chunks[3:]) == [True] * 3

    reader = subprocess.run(
        [sys.executable, "-m", "tests.kvstore.read_chunks", redis_server.url, *(k.hex() for k in keys)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert reader.returncode == 0, reader.stderr
    got = [json.loads(line) for line in reader.stdout.splitlines()]
    expected = [describe(c if isinstance(c, torch.Tensor) else torch.frombuffer(bytearray(c), dtype=torch.uint8))
                for c in chunks]  # fmt: skip
    assert got == expected

    local = two_nodes["a"].get(keys)  # and in this process, across both nodes
    assert [describe(t) for t in local] == expected
    assert local[0].dtype == torch.bfloat16 and tuple(local[0].shape) == KV_SHAPE


def test_match_prefix_is_exact_for_full_partial_and_uncached_chains(two_nodes):
    a, b = two_nodes["a"], two_nodes["b"]
    tokens = list(range(8 * CHUNK_TOKENS))
    keys = chain(tokens)
    chunk = torch.zeros(64, dtype=torch.uint8)
    a.put(keys[:6], [chunk] * 6)
    b.put(keys[:3] + keys[5:], [chunk] * 6)  # b has a hole at 3..4

    assert a.match_prefix(keys) == {"a": 6, "b": 3}
    assert a.match_prefix(keys[:2]) == {"a": 2, "b": 2}
    assert a.match_prefix(keys[3:]) == {"a": 3}  # b holds none of these leading keys
    assert a.match_prefix(keys)["nobody"] == 0  # a Counter: absent nodes read as 0
    diverged = chain(tokens[: 2 * CHUNK_TOKENS] + [999] * (6 * CHUNK_TOKENS))
    assert diverged[:2] == keys[:2] and diverged[2] != keys[2]
    assert a.match_prefix(diverged) == {"a": 2, "b": 2}
    assert a.match_prefix(chain([7] * 4 * CHUNK_TOKENS)) == {}
    assert a.match_prefix([]) == {}
    holders = a.locate(keys)
    assert holders[0] == ["a", "b"] and holders[3] == ["a"] and holders[6] == ["b"]


def test_match_counts_a_prefix_spread_over_nodes(two_nodes):
    """A conversation's earlier turn: the prompt's chunks on one node, the answer's on another."""
    a, b = two_nodes["a"], two_nodes["b"]
    keys = chain(list(range(100, 100 + 6 * CHUNK_TOKENS)))
    chunk = torch.zeros(64, dtype=torch.uint8)
    a.put(keys[:2], [chunk] * 2)
    b.put(keys[2:4], [chunk] * 2)
    b.put(keys[5:], [chunk])  # beyond a hole at 4: not part of any prefix
    found = a.match(keys)
    assert found.per_node == {"a": 2} and found.anywhere == 4
    assert a.match(keys[2:]).anywhere == 2 and a.match(keys[4:]).anywhere == 0
    assert [t.shape for t in a.get(keys[: found.anywhere])] == [chunk.shape] * 4  # fetched from both


def test_get_prefers_the_local_node_and_names_the_first_missing_key(two_nodes):
    a, b = two_nodes["a"], two_nodes["b"]
    keys = chain(list(range(4 * CHUNK_TOKENS)))
    a.put(keys[:2], [torch.full((8,), 1.0)] * 2)
    b.put(keys[:4], [torch.full((8,), 2.0)] * 4)
    assert [t[0].item() for t in a.get(keys)] == [1.0, 1.0, 2.0, 2.0]
    assert [t[0].item() for t in b.get(keys)] == [2.0] * 4
    missing = chain([5] * 3 * CHUNK_TOKENS)
    with pytest.raises(KeyError, match=f"key {missing[0].hex()} \\(#1\\) is not held by any live store node"):
        a.get([keys[0], missing[0], missing[1]])
    assert a.get([]) == []


def test_batched_delete_updates_the_index_at_once(two_nodes):
    a = two_nodes["a"]
    keys = chain(list(range(4 * CHUNK_TOKENS)))
    a.put(keys, [b"x" * 32] * 4)
    two_nodes["b"].put(keys[:1], [b"x" * 32])
    assert a.delete(keys[:2]) == 3  # two on a, one on b
    assert a.match_prefix(keys) == {}
    assert a.locate(keys) == [[], [], ["a"], ["a"]]


def test_nodes_report_usage_and_oversized_chunks_are_refused_with_the_fix(two_nodes):
    a = two_nodes["a"]
    keys = chain(list(range(3 * CHUNK_TOKENS)))
    a.put(keys[:2], [bytes(1024)] * 2)
    info = {n.node_id: n for n in a.nodes()}
    assert set(info) == {"a", "b"}
    assert (info["a"].num_chunks, info["a"].bytes_used, info["a"].capacity_bytes) == (
        2,
        2 * SLOT_BYTES,
        64 << 20,
    )
    assert info["a"].address.startswith("tcp://127.0.0.1:")
    with pytest.raises(
        StoreError, match="exceeds the slot size 4096; start the store node with --slot-bytes"
    ):
        a.put(keys[2:], [bytes(SLOT_BYTES + 1)])
    with pytest.raises(ValueError, match="2 keys but 1 chunks"):
        a.put(keys[:2], [b"x"])
    with pytest.raises(ValueError, match="keys must be non-empty bytes"):
        a.get(["not-bytes"])


def test_a_node_with_a_chunk_size_refuses_every_other_size_and_keeps_its_geometry(redis_server, start_node):
    """A hostile client's tiny chunk, stored first, must neither be stored nor size the slots."""
    start_node(redis_server.url, "fixed", chunk_bytes=2048)
    client = StoreClient(redis_url=redis_server.url, node_id="fixed")
    try:
        keys = chain(list(range(2 * CHUNK_TOKENS)))
        with pytest.raises(StoreError, match="refused a chunk of 16 bytes: .* exactly 2048 bytes"):
            client.put(keys[:1], [bytes(16)])
        with pytest.raises(StoreError, match="exactly 2048 bytes"):  # the whole batch, before any of it
            client.put(keys, [bytes(2048), bytes(2049)])
        assert client.match_prefix(keys) == {}
        assert client.put(keys, [bytes(2048), bytes([7]) * 2048]) == [True, True]
        assert bytes(client.get(keys[1:])[0].numpy()) == bytes([7]) * 2048
        (node,) = client.nodes()
        assert node.bytes_used == 2 * 2048  # slots of the chunk size, not of the first put
    finally:
        client.close()
