"""In-place transfers: a client on the node's host maps the node's arena and copies chunks in and
out itself (transfer.shared_memory); only small requests cross the socket. Real node processes, real Redis."""

from __future__ import annotations

import mmap

import pytest
import torch

from kvstore import StoreClient
from tests.kvstore.procs import wait_until
from transfer import RemoteError, RequestClient
from transfer.messages import (
    AttachReply,
    AttachRequest,
    ChunkSpec,
    CommitRequest,
    ExistsRequest,
    InPlaceGetReply,
    InPlaceGetRequest,
    ReleaseRequest,
    ReserveReply,
    ReserveRequest,
    StatsRequest,
)
from transfer.shared_memory import SharedRegion


def key(i: int) -> bytes:
    return i.to_bytes(16, "big")


def chunks(n: int, seed: int = 0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(4, 3, 64, generator=gen) for _ in range(n)]


def test_put_and_get_in_place_equal_the_socket_path_and_the_index_knows(redis_server, start_node):
    node = start_node(redis_server.url, "a")
    local = StoreClient(redis_server.url, node_id="a")
    remote = StoreClient(redis_server.url, node_id="a", shared_memory=False)  # as on another host
    admin = RequestClient(node.address)
    try:
        data = chunks(6)
        assert local.put([key(i) for i in range(3)], data[:3]) == [True] * 3
        assert local.num_in_place == 3
        assert remote.put([key(i) for i in range(3, 6)], data[3:]) == [True] * 3
        assert remote.num_in_place == 0
        assert local.match_prefix([key(i) for i in range(6)]) == {"a": 6}  # published at commit
        for client in (local, remote):  # each reads what either wrote
            got = client.get([key(i) for i in range(6)])
            assert all(torch.equal(g, d) and g.dtype == d.dtype for g, d in zip(got, data))
        assert local.num_in_place == 3 + 6 and remote.num_in_place == 0
        assert local.put([key(0)], data[:1]) == [True]  # held: only touched, nothing written
        assert local.num_in_place == 9
        got = local.get([key(0)])[0]
        got += 1  # the reader's own copy: the arena keeps the producer's bytes
        assert torch.equal(remote.get([key(0)])[0], data[0])
        stats = admin.request(StatsRequest(), 10)
        assert stats.num_pinned == 0 and stats.num_chunks == 6  # every lease released
    finally:
        admin.close()
        local.close()
        remote.close()


def test_a_node_that_keeps_its_arena_private_is_reached_over_the_socket(redis_server, start_node):
    node = start_node(redis_server.url, "a", extra=("--no-shared-memory",))
    client = StoreClient(redis_server.url, node_id="a")
    admin = RequestClient(node.address)
    try:
        assert admin.request(AttachRequest(), 10) == AttachReply("", b"", 0)
        data = chunks(2)
        assert client.put([key(1), key(2)], data) == [True, True]
        assert all(torch.equal(g, d) for g, d in zip(client.get([key(1), key(2)]), data))
        assert client.num_in_place == 0
        with pytest.raises(RemoteError, match="does not share its arena"):
            admin.request(InPlaceGetRequest((key(1),)), 10)
    finally:
        admin.close()
        client.close()


def test_a_mapping_whose_token_differs_is_refused(tmp_path):
    """What a client on another host (or in another container) sees: a file that is not the
    node's arena, or none at all."""
    path = tmp_path / "arena"
    path.write_bytes(b"x" * 16 + bytes(8192 - 16))
    assert SharedRegion.attach(str(path), b"t" * 16, 8192) is None
    assert SharedRegion.attach(str(tmp_path / "missing"), b"t" * 16, 8192) is None
    assert SharedRegion.attach(str(path), b"x" * 16, 4096) is None  # not its size
    assert SharedRegion.attach("/dev/null", b"x" * 16, 8192) is None  # not a regular file
    mapped = SharedRegion.attach(str(path), b"x" * 16, 8192)
    assert mapped is not None
    mapped.close()


def test_a_reservation_is_not_served_until_committed_and_lapses_unless_it_is(redis_server, start_node):
    node = start_node(redis_server.url, "a", extra=("--in-place-lease-s", "1"))
    client = StoreClient(redis_server.url, node_id="a")
    writer = RequestClient(node.address)
    try:
        arena = attach(writer)
        data = chunks(2)
        specs = tuple(spec_of(d) for d in data)
        reserved = writer.request(ReserveRequest((key(1), key(2)), specs), 10)
        assert isinstance(reserved, ReserveReply) and reserved.stored == (False, False)
        arena.write(reserved.offsets[0], data[0].numpy())  # half written: nobody may read it yet
        assert writer.request(ExistsRequest((key(1), key(2))), 10).present == (False, False)
        assert client.match_prefix([key(1)]) == {}
        stats = writer.request(StatsRequest(), 10)
        assert stats.num_pinned == 2

        wait_until(lambda: writer.request(StatsRequest(), 10).num_pinned == 0, 10, "the write lease to lapse")
        with pytest.raises(RemoteError, match="lapsed"):
            writer.request(CommitRequest(reserved.lease), 10)
        assert writer.request(ExistsRequest((key(1), key(2))), 10).present == (False, False)
        assert writer.request(StatsRequest(), 10).num_chunks == 0  # the slots are free again

        again = writer.request(ReserveRequest((key(1), key(2)), specs), 10)
        for offset, d in zip(again.offsets, data):
            arena.write(offset, d.numpy())
        assert writer.request(CommitRequest(again.lease), 10).stored == (True, True)
        assert all(torch.equal(g, d) for g, d in zip(client.get([key(1), key(2)]), data))
        arena.close()
    finally:
        writer.close()
        client.close()


def test_a_reader_that_never_releases_loses_its_pins_when_the_lease_ends(redis_server, start_node):
    node = start_node(redis_server.url, "a", extra=("--in-place-lease-s", "1"))
    client = StoreClient(redis_server.url, node_id="a")
    reader = RequestClient(node.address)
    try:
        client.put([key(1), key(2)], chunks(2))
        reply = reader.request(InPlaceGetRequest((key(1), key(3), key(2))), 10)
        assert isinstance(reply, InPlaceGetReply) and reply.found == (True, False, True)
        assert reader.request(StatsRequest(), 10).num_pinned == 2
        wait_until(lambda: reader.request(StatsRequest(), 10).num_pinned == 0, 10, "the read lease to lapse")
        assert reader.request(ReleaseRequest(reply.lease), 10).released is False  # already lapsed
        other = reader.request(InPlaceGetRequest((key(1),)), 10)
        assert reader.request(ReleaseRequest(other.lease), 10).released is True
        assert reader.request(StatsRequest(), 10).num_pinned == 0
    finally:
        reader.close()
        client.close()


def test_the_arena_is_a_shared_file_with_its_token_in_the_first_page():
    from kvstore.arena import SlotArena

    arena = SlotArena(4 * 4096, 4096, shared=True)
    assert arena.path is not None and len(arena.token) == 16
    assert arena.offset(0) == mmap.PAGESIZE and arena.offset(3) == mmap.PAGESIZE + 3 * 4096
    arena.view(2, 4096)[:4] = b"abcd"
    mapped = SharedRegion.attach(arena.path, arena.token, arena.size)
    assert mapped is not None
    assert bytes(mapped.view(arena.offset(2), 4)) == b"abcd"
    with pytest.raises(ValueError, match="outside"):
        mapped.view(0, 4)  # the token is not a chunk's to overwrite
    mapped.close()
    assert SlotArena(4096, 4096).path is None  # private unless asked


def spec_of(tensor: torch.Tensor) -> ChunkSpec:
    """What a writer reserves for a float32 chunk: its shape and checksum (xxh3, computed here)."""
    import xxhash

    return ChunkSpec("float32", tuple(tensor.shape), xxhash.xxh3_64_intdigest(tensor.numpy()))


def attach(conn: RequestClient) -> SharedRegion:
    """Map the arena of the node at the other end of ``conn``, as a client on its host does."""
    attached = conn.request(AttachRequest(), 10)
    arena = SharedRegion.attach(attached.path, attached.token, attached.size)
    assert arena is not None
    return arena


def test_a_client_holding_a_restarted_nodes_old_arena_maps_the_new_one(redis_server, start_node):
    """Same id, same address, a new process: the old mapping's token no longer matches, so the
    client neither writes into nor reads from the dead arena; it maps the new one."""
    first = start_node(redis_server.url, "a")
    port = int(first.address.rsplit(":", 1)[1])
    client = StoreClient(redis_server.url, node_id="a")
    try:
        data = chunks(2, seed=1)
        assert client.put([key(1)], data[:1]) == [True] and client.num_in_place == 1
        first.kill()
        start_node(redis_server.url, "a", port=port)
        assert client.put([key(2)], data[1:]) == [True]  # the stale token is seen: sent over the socket
        assert client.num_in_place == 1
        assert torch.equal(client.get([key(2)])[0], data[1])  # mapped afresh: read in place
        assert client.num_in_place == 2
        with pytest.raises(KeyError):
            client.get([key(1)])  # the first process's chunk died with it
    finally:
        client.close()


def test_a_key_being_written_in_place_is_neither_stored_twice_nor_served(redis_server, start_node):
    node = start_node(redis_server.url, "a")
    local = StoreClient(redis_server.url, node_id="a")
    remote = StoreClient(redis_server.url, node_id="a", shared_memory=False)
    writer = RequestClient(node.address)
    try:
        data = chunks(1, seed=2)
        spec = (spec_of(data[0]),)
        reserved = writer.request(ReserveRequest((key(5),), spec), 10)
        # a second writer of the same key is told it did not store it, by either path
        assert remote.put([key(5)], data) == [False]
        assert local.put([key(5)], data) == [False]
        assert writer.request(ReserveRequest((key(5),), spec), 10).offsets == (-1,)
        with pytest.raises(RemoteError, match="not a write lease"):  # a read lease is not committed
            writer.request(CommitRequest(writer.request(InPlaceGetRequest((key(5),)), 10).lease), 10)
        arena = attach(writer)
        arena.write(reserved.offsets[0], data[0].numpy())
        assert writer.request(CommitRequest(reserved.lease), 10).stored == (True,)
        assert torch.equal(local.get([key(5)])[0], data[0]) and torch.equal(remote.get([key(5)])[0], data[0])
        assert remote.put([key(5)], data) == [True]  # held now: only touched
        assert writer.request(StatsRequest(), 10).num_pinned == 0
        arena.close()
    finally:
        writer.close()
        local.close()
        remote.close()


def test_chunks_read_at_shutdown_are_kept_on_disk_and_writes_in_flight_are_not(
    redis_server, start_node, tmp_path
):
    disk = tmp_path / "disk"
    first = start_node(redis_server.url, "a", disk_path=disk)
    client = StoreClient(redis_server.url, node_id="a")
    admin = RequestClient(first.address)
    try:
        data = chunks(2, seed=3)
        assert client.put([key(1)], data[:1]) == [True]
        reading = admin.request(InPlaceGetRequest((key(1),)), 10)  # a reader that never releases
        assert reading.found == (True,)
        spec = (spec_of(data[1]),)
        assert admin.request(ReserveRequest((key(2),), spec), 10).offsets[0] >= 0  # never committed
        assert first.stop() == 0
        start_node(redis_server.url, "a", disk_path=disk)
        assert torch.equal(client.get([key(1)])[0], data[0])  # from the disk tier
        with pytest.raises(KeyError):
            client.get([key(2)])
    finally:
        admin.close()
        client.close()


def test_only_the_connection_that_took_a_lease_may_release_or_commit_it(redis_server, start_node):
    node = start_node(redis_server.url, "a")
    client = StoreClient(redis_server.url, node_id="a")
    owner, stranger = RequestClient(node.address), RequestClient(node.address)
    try:
        client.put([key(1)], chunks(1))
        reading = owner.request(InPlaceGetRequest((key(1),)), 10)
        assert stranger.request(ReleaseRequest(reading.lease), 10).released is False
        assert owner.request(StatsRequest(), 10).num_pinned == 1
        spec = (ChunkSpec("float32", (4, 3, 64), 0),)
        writing = owner.request(ReserveRequest((key(2),), spec), 10)
        with pytest.raises(RemoteError, match="not a write lease this connection holds"):
            stranger.request(CommitRequest(writing.lease), 10)
        assert owner.request(ReleaseRequest(reading.lease), 10).released is True
        assert owner.request(ReleaseRequest(writing.lease), 10).released is True  # abandoned
        assert owner.request(StatsRequest(), 10).num_pinned == 0
        assert owner.request(ExistsRequest((key(2),)), 10).present == (False,)
    finally:
        owner.close()
        stranger.close()
        client.close()
