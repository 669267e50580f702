"""Acceptance 3: a node dies, Redis restarts, a peer sends garbage; the store stays correct."""

from __future__ import annotations

import signal
import time

import msgpack
import pytest

from kvstore import StoreClient
from kvstore.index import StoreIndex
from kvstore.types import IndexUnavailable, NodeUnavailable
from tests.kvstore.procs import TTL_S, wait_until
from transfer import RemoteError, RequestClient, SocketOptions
from transfer import sockets as zsockets
from transfer.messages import (
    UNAVAILABLE,
    AbortTask,
    Buffer,
    ErrorReply,
    GetRequest,
    PutRequest,
    StatsReply,
    StatsRequest,
)
from transfer.wire import decode, encode

KEYS = [bytes([i]) * 16 for i in range(6)]
LAPSE_S = 3 * TTL_S + 5  # generous deadline for a lease to lapse and be noticed


@pytest.fixture
def client(redis_server):
    with StoreClient(redis_url=redis_server.url, connect_timeout_s=0.5) as c:
        yield c


def test_killed_node_fails_fast_then_drops_out_within_the_ttl(redis_server, start_node, client):
    nodes = [start_node(redis_server.url, n, wait=False) for n in ("a", "b")]
    for node in nodes:
        node.wait_registered()
    with StoreClient(redis_url=redis_server.url, node_id="a") as a, StoreClient(redis_url=redis_server.url, node_id="b") as b:  # fmt: skip
        a.put(KEYS, [b"x" * 64] * len(KEYS))
        b.put(KEYS[:2], [b"y" * 64] * 2)
    assert client.match_prefix(KEYS) == {"a": 6, "b": 2}

    nodes[0].kill()
    with pytest.raises(
        NodeUnavailable, match="store node a: no connection to tcp://127.0.0.1:\\d+ within 0.5 s"
    ):
        client.get(KEYS)  # the index still lists a: the transfer fails fast, the caller recomputes

    wait_until(lambda: "a" not in client.match_prefix(KEYS), LAPSE_S, "node a to drop out of match_prefix")
    assert client.match_prefix(KEYS) == {"b": 2}
    assert [n.node_id for n in client.nodes()] == ["b"]
    with pytest.raises(KeyError, match=f"key {KEYS[2].hex()} \\(#2\\) is not held by any live store node"):
        client.get(KEYS)
    assert [bytes(t.numpy()) for t in client.get(KEYS[:2])] == [b"y" * 64] * 2  # b's copies still serve
    index = StoreIndex(redis_server.url)
    wait_until(lambda: index.held_keys("a") == set(), LAPSE_S, "b to reap a's entries")
    index.close()


def test_nodes_reregister_and_republish_after_a_redis_restart(redis_server, start_node, client):
    node = start_node(redis_server.url, "a")
    client.put(KEYS, [b"x" * 64] * len(KEYS))
    redis_server.stop()
    with pytest.raises(IndexUnavailable):
        client.match_prefix(KEYS)
    redis_server.start()  # same port, empty
    wait_until(lambda: client.match_prefix(KEYS) == {"a": 6}, LAPSE_S, "a to republish its keys")
    assert [bytes(t.numpy()) for t in client.get(KEYS)] == [b"x" * 64] * 6
    assert "registered a" in node.log()


def test_a_put_while_redis_is_down_is_refused_and_published_once_it_is_back(redis_server, start_node, client):
    node = start_node(redis_server.url, "a")
    admin = RequestClient(node.address)
    try:
        redis_server.stop()
        with pytest.raises(IndexUnavailable):  # the client cannot even pick a node
            client.put(KEYS[:1], [b"x"])
        redis_server.start()
        wait_until(lambda: client.nodes() != [], LAPSE_S, "a to register again")
        assert client.put(KEYS, [b"x"] * 6) == [True] * 6
        assert admin.request(StatsRequest(), 10).num_chunks == 6
    finally:
        admin.close()


def test_a_put_the_index_missed_is_answered_unavailable_and_republished(redis_server, start_node, client):
    """The node holds the chunk, but its reply must not claim the index knows: it says
    UNAVAILABLE, and the chunk is published with everything else once Redis is back."""
    node = start_node(redis_server.url, "a")
    admin = RequestClient(node.address)
    try:
        redis_server.stop()
        with pytest.raises(RemoteError) as refused:
            admin.request(PutRequest((KEYS[0],), (Buffer(memoryview(b"y" * 64), "uint8", (64,)),)), 10)
        assert refused.value.code == UNAVAILABLE and "republishes" in refused.value.detail
        assert admin.request(GetRequest((KEYS[0],)), 10).found == (True,)  # still served from memory
        redis_server.start()
        wait_until(lambda: client.match_prefix(KEYS[:1]) == {"a": 1}, LAPSE_S, "a to republish its chunk")
        assert [bytes(t.numpy()) for t in client.get(KEYS[:1])] == [b"y" * 64]
    finally:
        admin.close()


def test_a_restarted_node_registers_again_empty(redis_server, start_node, client):
    first = start_node(redis_server.url, "a")
    port = int(first.address.rsplit(":", 1)[1])
    client.put(KEYS, [b"x" * 64] * 6)
    first.kill()
    start_node(redis_server.url, "a", port=port)  # same id and address, fresh memory
    wait_until(lambda: client.match_prefix(KEYS) == {}, LAPSE_S, "the restarted node to republish (nothing)")
    assert [n.node_id for n in client.nodes()] == ["a"]
    assert client.put(KEYS, [b"z" * 64] * 6) == [True] * 6  # the client reconnects to the new process
    assert [bytes(t.numpy()) for t in client.get(KEYS)] == [b"z" * 64] * 6


def test_a_clean_shutdown_deregisters_at_once(redis_server, start_node, client):
    node = start_node(redis_server.url, "a", ttl_s=60)  # a lapse would take a minute
    client.put(KEYS, [b"x"] * 6)
    assert node.stop() == 0
    assert client.nodes() == [] and client.match_prefix(KEYS) == {}


def test_malformed_frames_get_an_error_reply_and_the_node_keeps_serving(redis_server, start_node, client):
    node = start_node(redis_server.url, "a")
    client.put(KEYS, [b"x" * 64] * 6)
    raw = zsockets.connect_dealer(node.address, SocketOptions())
    try:
        for frames, problem in [
            ([msgpack.packb([1, 2])], "header must be a map"),
            ([b"\xc1garbage"], "not valid MessagePack"),
            (encode(GetRequest((KEYS[0],)))[:1] + [b"stray frame"], "frame count mismatch"),
            (encode(AbortTask("r")), "a store node does not serve abort_task"),
        ]:
            raw.send_multipart(frames)
            assert raw.poll(10_000), f"no reply to a message with {problem}"
            reply = decode(raw.recv_multipart()).message
            assert isinstance(reply, ErrorReply) and reply.code == "bad_request", reply
            assert problem in reply.message
    finally:
        raw.close()
    assert [bytes(t.numpy()) for t in client.get(KEYS)] == [b"x" * 64] * 6
    admin = RequestClient(node.address)
    assert isinstance(admin.request(StatsRequest(), 10), StatsReply)
    admin.close()


def test_put_to_a_named_node_that_is_not_live_is_refused(redis_server, start_node):
    start_node(redis_server.url, "a")
    ghost = StoreClient(redis_url=redis_server.url, node_id="ghost")
    with ghost, pytest.raises(NodeUnavailable, match="store node ghost is not live"):
        ghost.put(KEYS[:1], [b"x"])


def test_a_node_that_stops_mid_fetch_fails_that_fetch_in_time_and_keeps_no_pin(redis_server, start_node):
    """A node frozen (SIGSTOP) with a get outstanding: the reader gets ``NodeUnavailable`` within
    its timeout, not a hang; the node, thawed, answers a reader that went away, drops the reply,
    releases the chunks it pinned for it, and serves the next reader."""
    node = start_node(redis_server.url, "frozen")
    chunks = [bytes([i]) * (256 << 10) for i in range(len(KEYS))]
    with StoreClient(redis_url=redis_server.url, node_id="frozen", timeout_s=1.0) as reader:
        assert reader.put(KEYS, chunks) == [True] * len(KEYS)
        node.proc.send_signal(signal.SIGSTOP)
        try:
            started = time.monotonic()
            with pytest.raises(NodeUnavailable, match="store node frozen: no reply .* within 1 s"):
                reader.get(KEYS)
            assert time.monotonic() - started < 5.0
        finally:
            node.proc.send_signal(signal.SIGCONT)
        assert [bytes(t.numpy()) for t in reader.get(KEYS)] == chunks  # a new connection: served
    index = StoreIndex(redis_server.url)
    try:
        wait_until(lambda: index.nodes()[0].num_pinned == 0, LAPSE_S, "the frozen node's pins to be released")
    finally:
        index.close()
