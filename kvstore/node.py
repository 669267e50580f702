"""A store node: serves batched put / get / exists / delete from its arena (and its disk tier, when
it has one) and keeps the index exact.

One thread owns the node's state (requests, heartbeats, releasing pins), so a handler never
races another, and it never waits on Redis: a request that changes what the node holds (a put,
a delete, a get that promotes from disk) hands the change to an ``IndexWriter`` thread and is
answered once the change is published, while the loop goes on serving (the next put's copy
overlaps this one's publish, and changes that queue up meanwhile share one transaction). So a
reply still means the index knows. A put's bytes are not hashed here: they keep their producer's checksum, which every reader
checks (a chunk damaged on the way in, at rest or on the way out is refused by its reader, who
deletes it and recomputes). ``get`` replies point into the arena without a copy; the chunks stay pinned until ZeroMQ
reports that it is done with those bytes: sent, or dropped with a reader that went away or made
no progress for ``read_lease_s`` (the pin's lease).

With a disk tier (``disk_path``), a chunk the arena evicts is written to disk first, and a chunk
asked for that is only on disk is read back into the arena (promoted) and sent from there; its
file stays, so evicting it again costs no write. The index says which held chunks are on disk
only, so the conductor can price reading them.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import zmq

from kvstore.arena import SlotArena
from kvstore.config import StoreNodeConfig
from kvstore.disk import DiskTier
from kvstore.index import IndexDelta, StoreIndex
from kvstore.index_writer import IndexWriter, Ticket
from kvstore.pool import Chunk, ChunkPool
from kvstore.replication import HotChunks, Replicator
from kvstore.types import IndexUnavailable
from transfer import Incoming, ReplyServer, SocketOptions
from transfer.messages import (
    BAD_REQUEST,
    INTERNAL,
    UNAVAILABLE,
    AttachReply,
    AttachRequest,
    Buffer,
    ChunkSpec,
    CommitRequest,
    DeleteReply,
    DeleteRequest,
    ErrorReply,
    ExistsReply,
    ExistsRequest,
    GetReply,
    GetRequest,
    InPlaceGetReply,
    InPlaceGetRequest,
    Message,
    PutReply,
    PutRequest,
    ReleaseReply,
    ReleaseRequest,
    ReserveReply,
    ReserveRequest,
    StatsReply,
    StatsRequest,
)

log = logging.getLogger(__name__)

_IDLE_POLL_S = 0.1  # bounds how long a stop request waits for the loop to notice it
_SENDING_POLL_S = 0.005  # how often finished sends are checked for while chunks are pinned


@dataclass
class _Lease:
    """Chunks pinned for an in-place transfer: a reader's (``reading``) or a writer's, whose
    chunks are listed only at commit (``stored``: the reserve reply's answers, per key)."""

    deadline: float
    keys: tuple[bytes, ...]
    chunks: list[Chunk | None]  # None where nothing was reserved
    reading: bool
    stored: tuple[bool, ...] = ()
    peer: bytes = b""  # the connection that took it: only it may commit or release it


@dataclass
class _AfterPublish:
    """A reply held back until the index change it depends on is published."""

    reply: Message
    ticket: Ticket
    request: Incoming | None = None
    pinned: list[Chunk] = field(default_factory=list)


class StoreNode:
    """Owns the arena, the server socket and this node's entries in the index."""

    def __init__(self, config: StoreNodeConfig) -> None:
        self.config = config
        self.disk = (
            DiskTier(config.disk_path, config.disk_capacity_bytes, config.chunk_bytes)
            if config.disk_path
            else None
        )
        self.pool = ChunkPool(
            SlotArena(config.capacity_bytes, config.slot_size, shared=config.shared_memory),
            config.evict_watermark,
            spill=self._spill if self.disk is not None else None,
        )
        opts = SocketOptions(
            max_frame_bytes=config.max_frame_bytes, stall_timeout_ms=int(config.read_lease_s * 1000)
        )
        # A put's bytes are kept with their producer's checksum, not hashed here: every reader
        # checks them (end to end: the wire, the arena and the disk), and hashing on this one
        # thread would hold up every request behind it.
        self.server = ReplyServer(config.listen, opts=opts, verify_buffers=False)
        self.address = config.advertise or self.server.address
        self.index = StoreIndex(config.redis_url, prefix=config.index_prefix)
        self._registered = False  # False forces a full republish at the next heartbeat
        self._hot, self.replicator = None, None
        if config.replicate_after:
            self._hot = HotChunks(config.replicate_after, config.replicate_window_s)
            self.replicator = Replicator(
                StoreIndex(config.redis_url, prefix=config.index_prefix), config.node_id
            )
        self._writer = IndexWriter(StoreIndex(config.redis_url, prefix=config.index_prefix), config.node_id)
        self._held_back: list[_AfterPublish] = []  # in the order their changes were handed over
        self._index_down = False
        self._sending: list[tuple[zmq.MessageTracker, list[Chunk]]] = []
        self._pinned_by_request: list[Chunk] = []
        self._leases: dict[int, _Lease] = {}
        self._next_lease = 1
        self._peer = b""  # the connection whose request is being handled
        self._handlers: dict[type[Message], Callable] = {
            PutRequest: self._put,
            GetRequest: self._get,
            AttachRequest: self._attach,
            InPlaceGetRequest: self._get_in_place,
            ReserveRequest: self._reserve,
            CommitRequest: self._commit,
            ReleaseRequest: self._release,
            ExistsRequest: self._exists,
            DeleteRequest: self._delete,
            StatsRequest: self._stats,
        }

    def serve(self, stop: threading.Event) -> None:
        """Serve until ``stop`` is set, then deregister and close."""
        next_heartbeat = 0.0
        poller = zmq.Poller()
        poller.register(self.server.socket, zmq.POLLIN)
        poller.register(self._writer.fileno(), zmq.POLLIN)
        try:
            while not stop.is_set():
                now = time.monotonic()
                if now >= next_heartbeat:
                    self._heartbeat()
                    next_heartbeat = now + self.config.heartbeat_interval_s
                timeout_s = min(next_heartbeat - now, _SENDING_POLL_S if self._sending else _IDLE_POLL_S)
                if self._leases:
                    self._expire_leases(now)
                    timeout_s = min([timeout_s, *(lease.deadline - now for lease in self._leases.values())])
                ready = dict(poller.poll(max(0, int(timeout_s * 1000))))
                if self._writer.fileno() in ready:
                    self._writer.clear_wakeups()
                self._answer_published()
                if self.server.socket in ready:
                    request = self.server.recv(0)
                    if request is not None:
                        self._dispatch(request)
                self._release_sent()
        finally:
            self.close()

    # ---- requests ------------------------------------------------------------------------------

    def _dispatch(self, request: Incoming) -> None:
        handler = self._handlers.get(type(request.message))
        reply: Message | _AfterPublish
        if handler is None:
            reply = ErrorReply(BAD_REQUEST, f"a store node does not serve {request.message.KIND}")
        else:
            try:
                self._peer = request.peer
                reply = handler(request.message)
            except ValueError as e:
                reply = ErrorReply(BAD_REQUEST, str(e))
            except Exception as e:
                self.server.reply(request, ErrorReply(INTERNAL, f"store node {self.config.node_id}: {e!r}"))
                raise
        pinned, self._pinned_by_request = self._pinned_by_request, []
        if isinstance(reply, _AfterPublish):
            reply.request, reply.pinned = request, pinned
            self._held_back.append(reply)
            self._answer_published()
        else:
            self._answer(request, reply, pinned)

    def _answer_published(self, raise_unexpected: bool = True) -> None:
        """Send the held-back replies whose index changes are published (they complete in order).
        An unexpected publishing error is answered INTERNAL and raised (``raise_unexpected``) or,
        while closing, only answered, so that the rest of the shutdown still runs."""
        while self._held_back and self._held_back[0].ticket.done:
            held = self._held_back.pop(0)
            assert held.request is not None
            reply, error = held.reply, held.ticket.error
            if error is not None and isinstance(reply, ReserveReply):
                self._end(reply.lease)  # answered with an error: nothing to write
            if isinstance(error, IndexUnavailable):
                self._registered = False  # the index missed this change: republish in full
                reply = ErrorReply(UNAVAILABLE, f"{error}; the node republishes when the index is back")
            elif error is not None:
                self._answer(
                    held.request,
                    ErrorReply(INTERNAL, f"store node {self.config.node_id}: {error!r}"),
                    held.pinned,
                )
                if raise_unexpected:
                    raise error
                continue
            self._answer(held.request, reply, held.pinned)

    def _answer(self, request: Incoming, reply: Message, pinned: list[Chunk]) -> None:
        tracker = self.server.reply(request, reply)
        if isinstance(reply, (InPlaceGetReply, ReserveReply)) and reply.lease in self._leases:
            if tracker is None:  # its client is gone: nobody will release it
                self._end(reply.lease)
            else:  # the lease runs from when the client can start (a reply may wait on the index)
                self._leases[reply.lease].deadline = time.monotonic() + self.config.in_place_lease_s
        if tracker is not None and not tracker.done and pinned:
            self._sending.append((tracker, pinned))
        else:
            for chunk in pinned:
                self.pool.release(chunk)

    def _put(self, request: PutRequest) -> _AfterPublish:
        for buffer in request.buffers:  # refuse the whole batch before storing any of it
            self._check_chunk_size(buffer.nbytes)
        stored, writes = [], []
        for key, buffer in zip(request.keys, request.buffers):
            if self.pool.touch(key) or self._on_disk(key):  # a key names its content: held is stored
                stored.append(True)
                continue
            if self.pool.busy(key):  # another client is writing it in place: not stored by this put
                stored.append(False)
                continue
            chunk = self.pool.reserve(key, buffer.nbytes, buffer.dtype, buffer.shape, buffer.checksum)
            stored.append(chunk is not None)
            if chunk is not None:
                writes.append((chunk, buffer.data))
        evicted = self.pool.take_evicted()
        touched = [k for k, ok in zip(request.keys, stored) if ok] + evicted + self._disk_dropped()
        # The index learns of the new chunks while their bytes are copied in; the reply waits
        # for both (the copy is done when this returns).
        ticket = self._publish(touched)
        for chunk, data in writes:
            self.pool.write(chunk, data)
            self.pool.release(chunk)
        self.pool.touch_chain(list(request.keys))
        return _AfterPublish(PutReply(tuple(stored), len(evicted)), ticket)

    def _get(self, request: GetRequest) -> GetReply | _AfterPublish:
        found, buffers, promoted = [], [], []
        for key in request.keys:
            if self._on_disk(key):
                buffer = self._promote(key)
                promoted.append(key)
            else:
                chunk = self.pool.get(key)
                if chunk is not None:
                    self.pool.pin(chunk)
                    self._pinned_by_request.append(chunk)
                buffer = None if chunk is None else self._buffer(chunk)
            found.append(buffer is not None)
            if buffer is not None:
                buffers.append(buffer)
        if self._hot is not None:
            self._replicate_hot([k for k, ok in zip(request.keys, found) if ok], buffers)
        self.pool.touch_chain(list(request.keys))
        reply = GetReply(tuple(found), tuple(buffers))
        if promoted:  # tiers changed: the index learns before the reply goes out, as for a put
            return _AfterPublish(
                reply, self._publish(promoted + self.pool.take_evicted() + self._disk_dropped())
            )
        return reply

    # ---- in place: clients on this host copy the bytes themselves --------------------------------

    def _attach(self, request: AttachRequest) -> AttachReply:
        arena = self.pool.arena
        return AttachReply(arena.path or "", arena.token, arena.size)

    def _shared_arena(self) -> SlotArena:
        if self.pool.arena.path is None:
            raise ValueError(f"store node {self.config.node_id} does not share its arena")
        return self.pool.arena

    def _lease(self, lease: _Lease) -> int:
        lease.peer = self._peer
        lease_id, self._next_lease = self._next_lease, self._next_lease + 1
        self._leases[lease_id] = lease
        return lease_id

    def _get_in_place(self, request: InPlaceGetRequest) -> InPlaceGetReply:
        """Pin the keys held in memory and say where they are; a key on disk only or not held is
        not found here (the client asks for it with a ``GetRequest``, which promotes from disk)."""
        arena = self._shared_arena()
        found, chunks = [], []
        for key in request.keys:
            # a miss is counted by the plain get the client sends for what is not found here
            # (a chunk without its producer's checksum, too: the socket path computes one)
            chunk = self.pool.get(key) if self.pool.contains(key) else None
            if chunk is not None and chunk.checksum is None:
                chunk = None
            found.append(chunk is not None)
            if chunk is not None:
                self.pool.pin(chunk)
                chunks.append(chunk)
        found_keys = tuple(k for k, ok in zip(request.keys, found) if ok)
        if self._hot is not None:
            self._replicate_hot(list(found_keys), [self._buffer(c) for c in chunks])
        self.pool.touch_chain(list(request.keys))
        lease_s = self.config.in_place_lease_s
        lease = self._lease(_Lease(time.monotonic() + lease_s, found_keys, list(chunks), reading=True))
        return InPlaceGetReply(
            tuple(found),
            tuple(arena.offset(c.slot) for c in chunks),
            tuple(ChunkSpec(c.dtype, c.shape, c.checksum or 0) for c in chunks),
            lease,
            lease_s,
            arena.token,
        )

    def _reserve(self, request: ReserveRequest) -> ReserveReply | _AfterPublish:
        """Slots for the client to write into, listed (and in the index) only at commit."""
        arena = self._shared_arena()
        for spec in request.specs:  # refuse the whole batch before reserving any of it
            self._check_chunk_size(spec.nbytes)
        stored, chunks = [], []
        for key, spec in zip(request.keys, request.specs):
            chunk = None
            held = self.pool.touch(key) or self._on_disk(key)
            if not held and not self.pool.busy(key):
                chunk = self.pool.reserve(
                    key, spec.nbytes, spec.dtype, spec.shape, spec.checksum, ready=False
                )
            stored.append(held)
            chunks.append(chunk)
        lease_s = self.config.in_place_lease_s
        lease = self._lease(
            _Lease(time.monotonic() + lease_s, request.keys, chunks, reading=False, stored=tuple(stored))
        )
        offsets = tuple(-1 if c is None else arena.offset(c.slot) for c in chunks)
        reply = ReserveReply(tuple(stored), offsets, lease, lease_s, arena.token)
        evicted = self.pool.take_evicted() + self._disk_dropped()
        return _AfterPublish(reply, self._publish(evicted)) if evicted else reply

    def _commit(self, request: CommitRequest) -> _AfterPublish:
        lease = self._leases.get(request.lease)
        if lease is None or lease.reading or lease.peer != self._peer:
            raise ValueError(
                f"lease {request.lease} is not a write lease this connection holds (it lapsed after "
                f"{self.config.in_place_lease_s:g} s, or was never granted to it): nothing was stored"
            )
        del self._leases[request.lease]
        stored = list(lease.stored)
        for i, chunk in enumerate(lease.chunks):
            if chunk is not None:
                stored[i] = not chunk.deleted  # deleted meanwhile: not stored
                self.pool.commit(chunk)
                self.pool.release(chunk)
        evicted = self.pool.take_evicted()
        touched = [k for k, ok in zip(lease.keys, stored) if ok] + evicted + self._disk_dropped()
        self.pool.touch_chain(list(lease.keys))
        return _AfterPublish(PutReply(tuple(stored), len(evicted)), self._publish(touched))

    def _release(self, request: ReleaseRequest) -> ReleaseReply:
        """A reader is done with its chunks, or a writer abandons its reservation."""
        lease = self._leases.get(request.lease)
        if lease is None or lease.peer != self._peer:  # lapsed, or another connection's
            return ReleaseReply(False)
        self._end(request.lease)
        return ReleaseReply(True)

    def _end(self, lease_id: int) -> _Lease | None:
        """End a lease (None if it is not held): release what it pinned; a writer's uncommitted
        chunks are dropped."""
        lease = self._leases.pop(lease_id, None)
        if lease is None:
            return None
        for key, chunk in zip(lease.keys, lease.chunks):
            if chunk is None:
                continue
            if not lease.reading and not chunk.deleted:
                self.pool.delete(key)
            self.pool.release(chunk)
        return lease

    def _expire_leases(self, now: float) -> None:
        for lease_id in [i for i, lease in self._leases.items() if lease.deadline <= now]:
            lease = self._end(lease_id)
            assert lease is not None
            log.warning(
                "in-place %s lease %d lapsed after %.1f s: %s",
                "read" if lease.reading else "write", lease_id, self.config.in_place_lease_s,
                "pins released" if lease.reading else "its chunks were not stored",
            )  # fmt: skip

    def _check_chunk_size(self, nbytes: int) -> None:
        size = self.config.chunk_bytes
        if size and nbytes != size:
            raise ValueError(
                f"refused a chunk of {nbytes} bytes: store node {self.config.node_id} "
                f"holds chunks of exactly {size} bytes (this cluster's model and chunk size)"
            )
        self.pool.check_fits(nbytes)

    def _replicate_hot(self, keys: list[bytes], buffers: list[Buffer]) -> None:
        assert self._hot is not None and self.replicator is not None
        hot = set(self._hot.record(keys))
        for key, buffer in zip(keys, buffers):
            if key in hot:
                self.replicator.submit(key, buffer)

    def _buffer(self, chunk: Chunk) -> Buffer:
        # the producer's checksum, not one of the arena's bytes: a reader detects a change at rest too
        return Buffer(self.pool.view(chunk), chunk.dtype, chunk.shape, checksum=chunk.checksum)

    def _promote(self, key: bytes) -> Buffer | None:
        """Read a chunk held only on disk into the arena (pinned for this reply); None if its file
        proved unreadable (dropped). With every slot pinned, it is read into a buffer of its own."""
        assert self.disk is not None
        entry = self.disk.entry(key)
        assert entry is not None
        chunk = self.pool.reserve(key, entry.nbytes, entry.dtype, entry.shape, entry.checksum)
        if chunk is None:
            data = memoryview(bytearray(entry.nbytes))
            ok = self.disk.read_into(key, data)
            return Buffer(data, entry.dtype, entry.shape, checksum=entry.checksum) if ok else None
        if not self.disk.read_into(key, self.pool.view(chunk)):
            self.pool.delete(key)
            self.pool.release(chunk)
            return None
        self._pinned_by_request.append(chunk)  # reserve's pin now covers the send
        return self._buffer(chunk)

    def _spill(self, key: bytes, chunk: Chunk, data: memoryview) -> None:
        """Called by the pool as it evicts ``chunk``: keep a copy on disk (a no-op if one is there)."""
        assert self.disk is not None
        self.disk.write(key, data, chunk.dtype, chunk.shape, chunk.checksum)

    def _on_disk(self, key: bytes) -> bool:
        """Held on disk and not in memory."""
        return (
            self.disk is not None
            and not self.pool.contains(key)
            and not self.pool.busy(key)
            and self.disk.contains(key)
        )

    def _holds(self, key: bytes) -> bool:
        return self.pool.contains(key) or (self.disk is not None and self.disk.contains(key))

    def _disk_dropped(self) -> list[bytes]:
        return self.disk.take_dropped() if self.disk is not None else []

    def _exists(self, request: ExistsRequest) -> ExistsReply:
        return ExistsReply(tuple(self._holds(k) for k in request.keys))

    def _delete(self, request: DeleteRequest) -> _AfterPublish:
        deleted = tuple(
            self.pool.delete(k) | (self.disk is not None and self.disk.delete(k)) for k in request.keys
        )
        return _AfterPublish(
            DeleteReply(deleted), self._publish([k for k, ok in zip(request.keys, deleted) if ok])
        )

    def _stats(self, request: StatsRequest) -> StatsReply:
        pool = self.pool
        return StatsReply(
            node_id=self.config.node_id,
            slot_bytes=pool.arena.slot_bytes,
            num_slots=pool.arena.num_slots,
            **self._counters(),
        )

    def _release_sent(self) -> None:
        still_sending = []
        for tracker, chunks in self._sending:
            if tracker.done:
                for chunk in chunks:
                    self.pool.release(chunk)
            else:
                still_sending.append((tracker, chunks))
        self._sending = still_sending

    # ---- index ---------------------------------------------------------------------------------

    def _counters(self) -> dict[str, int]:
        pool, disk = self.pool, self.disk
        return {
            "capacity_bytes": self.config.capacity_bytes,
            "bytes_used": pool.bytes_used,
            "num_chunks": pool.num_chunks,
            "hits": pool.hits + (disk.hits if disk else 0),
            "misses": pool.misses,
            "num_evicted": pool.num_evicted,
            "num_pinned": pool.num_pinned,
            "disk_capacity_bytes": disk.capacity_bytes if disk else 0,
            "disk_bytes_used": disk.bytes_used if disk else 0,
            "disk_chunks": disk.num_chunks if disk else 0,
            "disk_hits": disk.hits if disk else 0,
            "disk_evicted": disk.num_evicted if disk else 0,
            "num_replicated": self.replicator.num_copied if self.replicator else 0,
        }

    def _publish(self, touched: list[bytes]) -> Ticket:
        """Hand the index what changed about the ``touched`` keys (held or gone, on which tier)
        and the node's counters; the ticket completes once Redis has them."""
        touched = list(dict.fromkeys(touched))
        held = [k for k in touched if self._holds(k)]
        gone = [k for k in touched if not self._holds(k)]
        on_disk = [k for k in held if self._on_disk(k)]
        return self._writer.submit(IndexDelta(held, gone, on_disk), self._counters())

    def _heartbeat(self) -> None:
        ttl_s, node_id = self.config.heartbeat_ttl_s, self.config.node_id
        try:
            if not (self._registered and self.index.heartbeat(node_id, ttl_s, self._counters())):
                self._writer.flush()  # a full registration lands after every change before it
                on_disk = (
                    [k for k in self.disk.stored_keys() if not self.pool.contains(k)] if self.disk else []
                )
                keys = self.pool.keys() + on_disk
                self.index.register(node_id, self.address, ttl_s, keys, self._counters(), on_disk=on_disk)
                log.info(
                    "registered %s at %s with %d chunks (%d on disk only)",
                    node_id,
                    self.address,
                    len(keys),
                    len(on_disk),
                )
                self._registered = True
            for lapsed in self.index.reap():
                log.info("reaped lapsed store node %s", lapsed)
        except IndexUnavailable as e:
            if not self._index_down:
                log.error("%s; serving reads and retrying every %.1f s", e, self.config.heartbeat_interval_s)
            self._index_down = True
            return
        if self._index_down:
            log.info("store index at %s is back", self.index.url)
        self._index_down = False

    def close(self) -> None:
        """Deregister (so readers stop looking here at once), keep what memory holds on disk (if
        the node has a disk tier: a restart on the same path comes back with it) and close."""
        self._writer.close()  # publish what is queued, before deregistering removes it all
        self._answer_published(raise_unexpected=False)
        self._release_sent()
        for lease_id in list(self._leases):  # uncommitted writes are dropped, reads' pins released
            self._end(lease_id)
        if self.disk is not None:
            kept = self.pool.spill_all()
            log.info("kept %d chunks of memory on disk; the disk tier holds %d", kept, self.disk.num_chunks)
        try:
            self.index.deregister(self.config.node_id)
        except IndexUnavailable as e:
            log.error("could not deregister %s (its lease will lapse): %s", self.config.node_id, e)
        if self.replicator is not None:
            self.replicator.close()
        self.server.close()
        self.index.close()
