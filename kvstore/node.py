"""A store node: serves batched put / get / exists / delete from its arena and keeps the index exact.

One thread owns the node's state (requests, heartbeats, releasing pins), so a handler never
races another; a helper thread only carries a put's index update while the put's bytes are copied. ``get`` replies point into the arena without a copy; the chunks stay pinned until ZeroMQ
reports that it is done with those bytes: sent, or dropped with a reader that went away or made
no progress for ``read_lease_s`` (the pin's lease).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import zmq

from kvstore.arena import SlotArena
from kvstore.config import StoreNodeConfig
from kvstore.index import StoreIndex
from kvstore.pool import Chunk, ChunkPool
from kvstore.types import IndexUnavailable
from transfer import Incoming, ReplyServer, SocketOptions
from transfer.messages import (
    BAD_REQUEST,
    INTERNAL,
    UNAVAILABLE,
    Buffer,
    DeleteReply,
    DeleteRequest,
    ErrorReply,
    ExistsReply,
    ExistsRequest,
    GetReply,
    GetRequest,
    Message,
    PutReply,
    PutRequest,
    StatsReply,
    StatsRequest,
)

log = logging.getLogger(__name__)

_IDLE_POLL_S = 0.1  # bounds how long a stop request waits for the loop to notice it
_SENDING_POLL_S = 0.005  # how often finished sends are checked for while chunks are pinned


class StoreNode:
    """Owns the arena, the server socket and this node's entries in the index."""

    def __init__(self, config: StoreNodeConfig) -> None:
        self.config = config
        self.pool = ChunkPool(SlotArena(config.capacity_bytes, config.slot_size), config.evict_watermark)
        opts = SocketOptions(
            max_frame_bytes=config.max_frame_bytes, stall_timeout_ms=int(config.read_lease_s * 1000)
        )
        self.server = ReplyServer(config.listen, opts=opts)
        self.address = config.advertise or self.server.address
        self.index = StoreIndex(config.redis_url, prefix=config.index_prefix)
        self._registered = False  # False forces a full republish at the next heartbeat
        # Index writes of a put overlap its copy into the arena; one worker keeps them in order.
        self._index_writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="index-writer")
        self._index_down = False
        self._sending: list[tuple[zmq.MessageTracker, list[Chunk]]] = []
        self._pinned_by_request: list[Chunk] = []
        self._handlers: dict[type[Message], Callable] = {
            PutRequest: self._put,
            GetRequest: self._get,
            ExistsRequest: self._exists,
            DeleteRequest: self._delete,
            StatsRequest: self._stats,
        }

    def serve(self, stop: threading.Event) -> None:
        """Serve until ``stop`` is set, then deregister and close."""
        next_heartbeat = 0.0
        try:
            while not stop.is_set():
                now = time.monotonic()
                if now >= next_heartbeat:
                    self._heartbeat()
                    next_heartbeat = now + self.config.heartbeat_interval_s
                timeout_s = min(next_heartbeat - now, _SENDING_POLL_S if self._sending else _IDLE_POLL_S)
                request = self.server.recv(max(0.0, timeout_s))
                if request is not None:
                    self._dispatch(request)
                self._release_sent()
        finally:
            self.close()

    # ---- requests ------------------------------------------------------------------------------

    def _dispatch(self, request: Incoming) -> None:
        handler = self._handlers.get(type(request.message))
        if handler is None:
            reply: Message = ErrorReply(BAD_REQUEST, f"a store node does not serve {request.message.KIND}")
        else:
            try:
                reply = handler(request.message)
            except ValueError as e:
                reply = ErrorReply(BAD_REQUEST, str(e))
            except IndexUnavailable as e:
                reply = ErrorReply(UNAVAILABLE, f"{e}; the node republishes when the index is back")
            except Exception as e:
                self.server.reply(request, ErrorReply(INTERNAL, f"store node {self.config.node_id}: {e!r}"))
                raise
        pinned, self._pinned_by_request = self._pinned_by_request, []
        tracker = self.server.reply(request, reply)
        if tracker is not None and not tracker.done and pinned:
            self._sending.append((tracker, pinned))
        else:
            for chunk in pinned:
                self.pool.release(chunk)

    def _put(self, request: PutRequest) -> PutReply:
        size = self.config.chunk_bytes
        for buffer in request.buffers:  # refuse the whole batch before storing any of it
            if size and buffer.nbytes != size:
                raise ValueError(
                    f"refused a chunk of {buffer.nbytes} bytes: store node {self.config.node_id} "
                    f"holds chunks of exactly {size} bytes (this cluster's model and chunk size)"
                )
            self.pool.check_fits(buffer.nbytes)
        stored, writes = [], []
        for key, buffer in zip(request.keys, request.buffers):
            if self.pool.touch(key):
                stored.append(True)
                continue
            chunk = self.pool.reserve(key, buffer.nbytes, buffer.dtype, buffer.shape, buffer.checksum)
            stored.append(chunk is not None)
            if chunk is not None:
                writes.append((chunk, buffer.data))
        evicted = self.pool.take_evicted()
        touched = [k for k, ok in zip(request.keys, stored) if ok] + evicted
        # The index learns of the new chunks while their bytes are copied in: no reader can ask
        # this node for them before this handler returns, and the reply waits for both.
        published = self._index_writer.submit(self._publish, *self._index_delta(touched))
        for chunk, data in writes:
            self.pool.write(chunk, data)
            self.pool.release(chunk)
        self.pool.touch_chain(list(request.keys))
        published.result()
        return PutReply(tuple(stored), len(evicted))

    def _get(self, request: GetRequest) -> GetReply:
        found, buffers = [], []
        for key in request.keys:
            chunk = self.pool.get(key)
            found.append(chunk is not None)
            if chunk is not None:
                self.pool.pin(chunk)
                self._pinned_by_request.append(chunk)
                # the producer's checksum, not one of the arena's bytes: a reader detects a change at rest too
                buffers.append(
                    Buffer(self.pool.view(chunk), chunk.dtype, chunk.shape, checksum=chunk.checksum)
                )
        self.pool.touch_chain(list(request.keys))
        return GetReply(tuple(found), tuple(buffers))

    def _exists(self, request: ExistsRequest) -> ExistsReply:
        return ExistsReply(tuple(self.pool.contains(k) for k in request.keys))

    def _delete(self, request: DeleteRequest) -> DeleteReply:
        deleted = tuple(self.pool.delete(k) for k in request.keys)
        self._publish(*self._index_delta([k for k, ok in zip(request.keys, deleted) if ok]))
        return DeleteReply(deleted)

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
        pool = self.pool
        return {
            "capacity_bytes": self.config.capacity_bytes,
            "bytes_used": pool.bytes_used,
            "num_chunks": pool.num_chunks,
            "hits": pool.hits,
            "misses": pool.misses,
            "num_evicted": pool.num_evicted,
            "num_pinned": pool.num_pinned,
        }

    def _index_delta(self, touched: list[bytes]) -> tuple[list[bytes], list[bytes], dict[str, int]]:
        """What the index must learn about ``touched`` keys: (added, removed, counters)."""
        touched = list(dict.fromkeys(touched))
        added = [k for k in touched if self.pool.contains(k)]
        removed = [k for k in touched if not self.pool.contains(k)]
        return added, removed, self._counters()

    def _publish(self, added: list[bytes], removed: list[bytes], counters: dict[str, int]) -> None:
        """Bring the index in line with the pool, before the reply goes out."""
        try:
            self.index.publish(self.config.node_id, added, removed, counters)
        except IndexUnavailable:
            self._registered = False  # the index missed this update: republish in full later
            raise

    def _heartbeat(self) -> None:
        ttl_s, node_id = self.config.heartbeat_ttl_s, self.config.node_id
        try:
            if not (self._registered and self.index.heartbeat(node_id, ttl_s, self._counters())):
                self.index.register(node_id, self.address, ttl_s, self.pool.keys(), self._counters())
                log.info("registered %s at %s with %d chunks", node_id, self.address, self.pool.num_chunks)
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
        """Deregister (so readers stop looking here at once) and close the socket."""
        try:
            self.index.deregister(self.config.node_id)
        except IndexUnavailable as e:
            log.error("could not deregister %s (its lease will lapse): %s", self.config.node_id, e)
        self._index_writer.shutdown()
        self.server.close()
        self.index.close()
