"""Hot-chunk replication: a chunk a node serves often gets a second copy on another live node.

A popular prefix (a system prompt every request shares) otherwise sits on one node, which then
serves every fetch of it. The node counts the fetches of each key in a sliding window; a key
fetched more than ``threshold`` times within ``window_s`` is copied to the live node with the most
free memory that does not hold it yet. Readers need nothing new: the index lists every live copy,
``match`` counts a key held anywhere, and ``StoreClient.get`` spreads its reads over the holders.

The copy leaves the node's thread at once: its bytes are copied out of the arena (so no pin waits
on another node) and a thread of the ``Replicator`` puts them, with the producer's checksum, so the
copy is verified on arrival and by every later reader. At most ``max_pending_bytes`` wait; beyond,
a copy is skipped (a hot key is asked for again soon enough). A key is copied at most once per
``10 * window_s``: if its copy is evicted and it is still hot, it is copied again after that.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable

from kvstore.index import StoreIndex
from kvstore.types import NodeInfo
from transfer import PeerTimeout, PeerUnavailable, RemoteError, RequestClient, SocketOptions
from transfer.messages import Buffer, PutReply, PutRequest

log = logging.getLogger(__name__)

_QUIET_FACTOR = 10  # a replicated key is not copied again for this many windows


class HotChunks:
    """Fetch counts per key over the last ``window_s`` seconds."""

    def __init__(self, threshold: int, window_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        if threshold < 1 or window_s <= 0:
            raise ValueError(
                f"replication needs threshold >= 1 and window_s > 0, got {threshold}, {window_s}"
            )
        self.threshold, self.window_s, self._clock = threshold, window_s, clock
        self._fetches: dict[bytes, deque[float]] = {}
        self._copied: dict[bytes, float] = {}  # key -> when it was last sent for copying

    def record(self, keys: list[bytes]) -> list[bytes]:
        """Count one fetch of each of ``keys``; returns those that just became hot (fetched more
        than ``threshold`` times within the window and not copied recently)."""
        now = self._clock()
        hot = []
        for key in keys:
            times = self._fetches.setdefault(key, deque())
            times.append(now)
            while times and times[0] < now - self.window_s:
                times.popleft()
            if (
                len(times) > self.threshold
                and now - self._copied.get(key, -1e18) > _QUIET_FACTOR * self.window_s
            ):
                self._copied[key] = now
                hot.append(key)
        if len(self._fetches) > 4 * 65536:  # forget keys nobody asked for within the window
            self._forget(now)
        return hot

    def _forget(self, now: float) -> None:
        self._fetches = {k: t for k, t in self._fetches.items() if t and t[-1] >= now - self.window_s}
        self._copied = {k: t for k, t in self._copied.items() if now - t <= _QUIET_FACTOR * self.window_s}


class Replicator:
    """Puts copies of chunks on other live nodes, from a thread of its own."""

    def __init__(
        self, index: StoreIndex, node_id: str, *, max_pending_bytes: int = 64 << 20, timeout_s: float = 10.0
    ) -> None:
        self._index, self.node_id = index, node_id
        self.max_pending_bytes, self.timeout_s = max_pending_bytes, timeout_s
        self._queue: queue.Queue = queue.Queue()
        self._lock = threading.Lock()
        self._pending_bytes = 0
        self.num_copied = 0  # chunks a peer stored
        self._clients: dict[str, RequestClient] = {}
        self._thread = threading.Thread(target=self._run, name="replicator", daemon=True)
        self._thread.start()

    def submit(self, key: bytes, buffer: Buffer) -> bool:
        """Queue a copy of ``buffer`` (its bytes are copied now) for another node; False if too
        much is queued already."""
        size = memoryview(buffer.data).nbytes
        with self._lock:
            if self._pending_bytes + size > self.max_pending_bytes:
                return False
            self._pending_bytes += size
        copy = Buffer(bytes(buffer.data), buffer.dtype, buffer.shape, checksum=buffer.checksum)
        self._queue.put((key, copy, size))
        return True

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=self.timeout_s)
        for client in self._clients.values():
            client.close()
        self._index.close()

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            key, buffer, size = item
            try:
                self._copy(key, buffer)
            except Exception as e:  # a copy is an optimization: log, never stop the thread
                log.warning("could not replicate chunk %s: %s", key.hex(), e)
            finally:
                with self._lock:
                    self._pending_bytes -= size

    def _copy(self, key: bytes, buffer: Buffer) -> None:
        target = self._target(key)
        if target is None:
            return
        client = self._clients.get(target.node_id)
        if client is None or client.address != target.address:
            if client is not None:
                client.close()
            client = self._clients[target.node_id] = RequestClient(target.address, opts=SocketOptions())
        try:
            reply = client.request(PutRequest((key,), (buffer,)), timeout_s=self.timeout_s)
        except (PeerUnavailable, PeerTimeout, RemoteError) as e:
            self._clients.pop(target.node_id).close()
            log.warning("replicating chunk %s to %s failed: %s", key.hex(), target.node_id, e)
            return
        if isinstance(reply, PutReply) and all(reply.stored):
            self.num_copied += 1
            log.debug("replicated chunk %s to %s", key.hex(), target.node_id)

    def _target(self, key: bytes) -> NodeInfo | None:
        """The live node with the most free memory that does not hold ``key`` (None: no such node)."""
        holders = {h.node_id for h in self._index.locate([key]) if h.held[0]}
        others = [n for n in self._index.nodes() if n.node_id != self.node_id and n.node_id not in holders]
        return max(others, key=lambda n: (n.free_bytes, n.node_id), default=None)
