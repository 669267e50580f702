"""``StoreClient``: what workers and the router use to put, find and fetch chunks.

Lookups read the Redis index (one round trip); transfers go straight to the node holding a
chunk. Torch is imported only by ``put`` and ``get``, so index reads stay torch-free.
"""

from __future__ import annotations

import os
import threading
import time
import zlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from kvstore.index import DEFAULT_PREFIX, Holding, StoreIndex
from kvstore.types import NodeInfo, NodeUnavailable, StoreError, key_hex
from transfer import PeerTimeout, PeerUnavailable, RemoteError, RequestClient, SocketOptions
from transfer.errors import CorruptBuffer
from transfer.messages import (
    AttachReply,
    AttachRequest,
    Buffer,
    ChunkSpec,
    CommitRequest,
    DeleteReply,
    DeleteRequest,
    GetReply,
    GetRequest,
    InPlaceGetReply,
    InPlaceGetRequest,
    PutReply,
    PutRequest,
    ReleaseRequest,
    ReserveReply,
    ReserveRequest,
)
from transfer.shared_memory import SharedRegion
from transfer.wire import checksum, digest

if TYPE_CHECKING:
    import torch


MiB = 1 << 20


@dataclass(frozen=True)
class PrefixMatch:
    per_node: Counter[str]  # node id -> leading keys of the chain it holds (absent: 0)
    anywhere: int  # leading keys of the chain held by some live node each
    on_disk: int = 0  # of those ``anywhere`` keys, how many no live node holds in memory (a disk read)


class StoreClient:
    """Client of the KV store. Thread-safe (transfers are serialized).

    ``node_id`` names this process's own store node: ``put`` writes there and ``get`` reads from
    it when it holds a key. Without it, ``put`` picks the live node with the most free bytes.
    ``timeout_s`` bounds each transfer; a node that cannot be reached fails after
    ``connect_timeout_s``. A ``put`` is sent as requests of about ``max_request_bytes``, a ``get``
    as requests of at most ``max_request_keys`` per node, all in flight at once: one side works on
    a request while the next is on the wire (4 MiB and 4 keys were fastest in ``bench.transfer``
    against 16 and 16 or 2 and 2). Every failure of a node is ``NodeUnavailable``, of Redis
    ``IndexUnavailable``, of a request ``StoreError``: all mean "not from the store; recompute".
    A chunk whose bytes fail their producer's checksum raises ``transfer.errors.CorruptBuffer``.

    With ``shared_memory`` (the default), a node on this host is written and read in place: the
    client maps its arena (``transfer.shared_memory``) and copies the bytes itself, and only small
    requests cross the socket (a put: reserve, copy in, commit; a get: pin, copy out, release).
    A node this process cannot map (another host or container) is reached over the socket.
    """

    def __init__(
        self,
        redis_url: str,
        *,
        node_id: str | None = None,
        timeout_s: float = 10.0,
        connect_timeout_s: float = 1.0,
        max_request_bytes: int = 4 * MiB,
        max_request_keys: int = 4,
        index_prefix: str = DEFAULT_PREFIX,
        shared_memory: bool = True,
    ) -> None:
        if min(timeout_s, connect_timeout_s, max_request_bytes, max_request_keys) <= 0:
            raise ValueError(
                "timeout_s, connect_timeout_s, max_request_bytes and max_request_keys must be positive"
            )
        self.index = StoreIndex(redis_url, prefix=index_prefix)
        self._settings = {
            "redis_url": redis_url, "node_id": node_id, "timeout_s": timeout_s, "connect_timeout_s": connect_timeout_s,
            "max_request_bytes": max_request_bytes, "max_request_keys": max_request_keys,
            "index_prefix": index_prefix, "shared_memory": shared_memory,
        }  # fmt: skip
        self.node_id = node_id
        self.timeout_s = timeout_s
        self.connect_timeout_s = connect_timeout_s
        self.max_request_bytes = max_request_bytes
        self.max_request_keys = max_request_keys
        self._connections: dict[str, RequestClient] = {}
        self.shared_memory = shared_memory
        self._arenas: dict[str, tuple[str, SharedRegion | None]] = {}  # node id -> (address, mapping)
        self.num_in_place = 0  # chunks put or got in place (the rest went over a socket)
        self._own_address: str | None = None  # node_id's address, looked up once
        self._spread = os.urandom(8)  # which copy this client reads, where a chunk has several
        self._lock = threading.Lock()

    def clone(self) -> StoreClient:
        """Another client of the same store and node, with connections and a lock of its own: a
        thread that writes through it never makes this one's reads wait."""
        return StoreClient(**self._settings)

    # ---- lookups (index only) ------------------------------------------------------------------

    def match_prefix(self, keys: Sequence[bytes]) -> Counter[str]:
        """``{node_id: number of leading keys of the chain that node holds}`` over live nodes.

        Returned as a ``Counter``: nodes holding none of the leading keys are absent and read as 0.
        """
        return self.match(keys).per_node

    def match(self, keys: Sequence[bytes]) -> PrefixMatch:
        """``match_prefix`` and, in the same index read, the longest prefix of the chain that the
        live nodes hold between them (a conversation's earlier turns may sit on several nodes:
        a prompt's chunks where it was prefilled, its answer's where it was decoded)."""
        holdings = self.index.locate(list(keys))
        per_node: Counter[str] = Counter()
        for holding in holdings:
            leading = next((i for i, held in enumerate(holding.held) if not held), len(keys))
            if leading:
                per_node[holding.node_id] = leading
        anywhere = [any(h.held[i] for h in holdings) for i in range(len(keys))]
        leading = next((i for i, held in enumerate(anywhere) if not held), len(keys))
        on_disk = sum(not any(h.in_memory(i) for h in holdings) for i in range(leading))
        return PrefixMatch(per_node, leading, on_disk)

    def locate(self, keys: Sequence[bytes]) -> list[list[str]]:
        """For each key, the live nodes holding it (the longest cached prefix ends at the first [])."""
        holdings = self.index.locate(list(keys))
        return [[h.node_id for h in holdings if h.held[i]] for i in range(len(keys))]

    def nodes(self) -> list[NodeInfo]:
        """Live nodes with their address, bytes used and capacity, sorted by id."""
        return self.index.nodes()

    # ---- transfers ------------------------------------------------------------------------------

    def put(self, keys: Sequence[bytes], chunks: Sequence[Any]) -> list[bool]:
        """Store ``chunks[i]`` under ``keys[i]`` on one node; ``result[i]`` is False if that node
        had no room for it (everything pinned). Chunks: tensors of any supported dtype, numpy
        arrays or bytes-like objects; ``get`` returns them with the same dtype and shape."""
        from kvstore.tensors import to_buffer

        _check_keys(keys)
        if len(keys) != len(chunks):
            raise ValueError(f"put got {len(keys)} keys but {len(chunks)} chunks")
        if not keys:
            return []
        buffers = [to_buffer(c) for c in chunks]
        stored: list[bool] = []
        with self._lock:
            node_id, address = self._put_target()
            try:
                arena = self._arena(node_id, address)
                in_place = (
                    None if arena is None else self._put_in_place(node_id, address, arena, keys, buffers)
                )
            except NodeUnavailable:
                self._own_address = None  # look it up again next time: it may have moved
                raise
            if in_place is not None:
                return in_place
            # All parts are in flight at once: the node copies one into its arena while the
            # next is still arriving.
            ranges = _batches([b.nbytes for b in buffers], self.max_request_bytes)
            pending: list[int] = []
            try:
                for start, stop in ranges:
                    request = PutRequest(tuple(keys[start:stop]), tuple(buffers[start:stop]))
                    pending.append(self._submit(node_id, address, request))
                for (start, stop), msg_id in zip(ranges, list(pending)):
                    reply = self._wait(node_id, address, msg_id)
                    pending.remove(msg_id)
                    assert isinstance(reply, PutReply) and len(reply.stored) == stop - start
                    stored.extend(reply.stored)
            except NodeUnavailable:
                self._own_address = None  # look it up again next time: it may have moved
                raise
            finally:
                for msg_id in pending:
                    if node_id in self._connections:
                        self._connections[node_id].cancel(msg_id)
        return stored

    def get(self, keys: Sequence[bytes]) -> list[torch.Tensor]:
        """The chunks under ``keys``, in order, as tensors (the dtype and shape they were put with).

        Raises ``KeyError`` naming the first key no live node holds (checked before any transfer),
        or that its node no longer had; ``NodeUnavailable`` if a holder does not answer.
        """
        from kvstore.tensors import to_tensor

        _check_keys(keys)
        holdings = self.index.locate(list(keys))
        plan = _assign(keys, holdings, self.node_id, self._spread)
        results: list[Any] = [None] * len(keys)  # a Buffer (received) or a tensor (copied in place)
        with self._lock:
            for node_id, (address, positions) in plan.items():
                arena = self._arena(node_id, address)
                if arena is not None:
                    self._get_in_place(node_id, address, arena, keys, positions, results)
            # What is left goes over the sockets (all of a node's keys, or those it did not hold
            # in memory: a key on its disk tier is promoted by a plain get). Every request is in
            # flight at once, a node's keys split into requests of at most ``max_request_keys``:
            # this side checks one reply while the next is on the wire.
            parts = [
                (node_id, address, left[start : start + self.max_request_keys])
                for node_id, (address, positions) in plan.items()
                if (left := [i for i in positions if results[i] is None])
                for start in range(0, len(left), self.max_request_keys)
            ]
            pending: list[tuple[str, int]] = []
            try:
                for node_id, address, positions in parts:
                    request = GetRequest(tuple(keys[i] for i in positions))
                    pending.append((node_id, self._submit(node_id, address, request)))
                for (node_id, address, positions), sent in zip(parts, list(pending)):
                    reply = self._wait(node_id, address, sent[1])
                    pending.remove(sent)
                    assert isinstance(reply, GetReply) and len(reply.found) == len(positions)
                    buffers = iter(reply.buffers)
                    for i, found in zip(positions, reply.found):
                        results[i] = next(buffers) if found else None
            finally:
                for node_id, msg_id in pending:
                    if node_id in self._connections:
                        self._connections[node_id].cancel(msg_id)
        missing = next((i for i, b in enumerate(results) if b is None), None)
        if missing is not None:
            raise KeyError(f"key {key_hex(keys[missing])} (#{missing}) was evicted from its node")
        return [to_tensor(b) if isinstance(b, Buffer) else b for b in results]

    def delete(self, keys: Sequence[bytes]) -> int:
        """Remove ``keys`` from every live node holding them; returns how many copies were deleted."""
        _check_keys(keys)
        deleted = 0
        with self._lock:
            for holding in self.index.locate(list(keys)):
                mine = tuple(k for k, held in zip(keys, holding.held) if held)
                if mine:
                    reply = self._call(holding.node_id, holding.address, DeleteRequest(mine))
                    assert isinstance(reply, DeleteReply)
                    deleted += sum(reply.deleted)
        return deleted

    # ---- in place ------------------------------------------------------------------------------

    def _arena(self, node_id: str, address: str) -> SharedRegion | None:
        """This process's mapping of the node's arena, attached on first use; None if it cannot
        map it (or ``shared_memory`` is off)."""
        if not self.shared_memory:
            return None
        known = self._arenas.get(node_id)
        if known is not None and known[0] == address:
            return known[1]
        self._forget_arena(node_id)
        try:
            reply = self._call(node_id, address, AttachRequest())
        except StoreError:  # a node that does not serve in-place transfers: the socket it is
            reply = AttachReply("", b"", 0)
        assert isinstance(reply, AttachReply)
        arena = SharedRegion.attach(reply.path, reply.token, reply.size)
        self._arenas[node_id] = (address, arena)
        return arena

    def _forget_arena(self, node_id: str) -> None:
        known = self._arenas.pop(node_id, None)
        if known is not None and known[1] is not None:
            known[1].close()

    def _put_in_place(
        self, node_id: str, address: str, arena: SharedRegion, keys: Sequence[bytes], buffers: list[Buffer]
    ) -> list[bool] | None:
        """Reserve slots, copy the chunks in, commit; None if the node's arena is no longer the
        one mapped (it restarted) or the reservation came too late to use: the caller sends the
        chunks over the socket."""
        specs = tuple(ChunkSpec(b.dtype, b.shape, checksum(b)) for b in buffers)
        asked = time.monotonic()
        reply = self._call(node_id, address, ReserveRequest(tuple(keys), specs))
        assert isinstance(reply, ReserveReply) and len(reply.offsets) == len(keys)
        stale = reply.token != arena.token
        # a reply that came after half its lease: the slots may be gone before the copy is done
        if stale or time.monotonic() - asked > reply.lease_s / 2:
            self._send_release(node_id, address, reply.lease)  # the node drops what was reserved
            if stale:
                self._forget_arena(node_id)
            return None
        try:
            for offset, buffer in zip(reply.offsets, buffers):
                if offset >= 0:
                    arena.write(offset, buffer.data)
        except BaseException:
            self._send_release(node_id, address, reply.lease)
            raise
        committed = self._call(node_id, address, CommitRequest(reply.lease))
        assert isinstance(committed, PutReply) and len(committed.stored) == len(keys)
        self.num_in_place += sum(o >= 0 for o in reply.offsets)
        return list(committed.stored)

    def _get_in_place(
        self,
        node_id: str,
        address: str,
        arena: SharedRegion,
        keys: Sequence[bytes],
        positions: list[int],
        results: list[Any],
    ) -> None:
        """Copy out of the node's arena the chunks of ``positions`` it holds in memory (pinned
        meanwhile); the others stay None in ``results``."""
        reply = self._call(node_id, address, InPlaceGetRequest(tuple(keys[i] for i in positions)))
        assert isinstance(reply, InPlaceGetReply) and len(reply.found) == len(positions)
        try:
            if reply.token != arena.token:  # the node restarted: attach again next time
                self._forget_arena(node_id)
                return
            where = iter(zip(reply.offsets, reply.specs))
            for i, found in zip(positions, reply.found):
                if found:
                    offset, spec = next(where)
                    results[i] = _copy_out(arena, offset, spec, f"key {key_hex(keys[i])} (#{i})")
                    self.num_in_place += 1
        finally:
            self._send_release(node_id, address, reply.lease)

    def _send_release(self, node_id: str, address: str, lease: int) -> None:
        """Tell the node a lease is done with, without waiting for its answer."""
        try:
            conn = self._connection(node_id, address)
            conn.cancel(conn.submit(ReleaseRequest(lease)))
        except PeerUnavailable:
            pass  # the lease lapses on its own

    # ---- plumbing -------------------------------------------------------------------------------

    def _put_target(self) -> tuple[str, str]:
        if self.node_id is not None:
            if self._own_address is None:
                mine = [n for n in self.index.nodes() if n.node_id == self.node_id]
                if not mine:
                    raise NodeUnavailable(
                        f"store node {self.node_id} is not live in the index at {self.index.url}"
                    )
                self._own_address = mine[0].address
            return self.node_id, self._own_address
        live = self.index.nodes()
        if not live:
            raise StoreError(f"no live store node is registered in the index at {self.index.url}")
        best = max(live, key=lambda n: (n.free_bytes, n.node_id))
        return best.node_id, best.address

    def _connection(self, node_id: str, address: str) -> RequestClient:
        conn = self._connections.get(node_id)
        if conn is None or conn.address != address:  # first use, or the node moved
            if conn is not None:
                conn.close()
            conn = RequestClient(address, opts=SocketOptions(), connect_timeout_s=self.connect_timeout_s)
            self._connections[node_id] = conn
        return conn

    def _submit(self, node_id: str, address: str, request: Any) -> int:
        try:
            return self._connection(node_id, address).submit(request)
        except PeerUnavailable as e:
            self._drop(node_id)
            raise NodeUnavailable(f"store node {node_id}: {e}") from e

    def _wait(self, node_id: str, address: str, msg_id: int) -> Any:
        try:
            return self._connections[node_id].wait(msg_id, self.timeout_s)
        except (PeerUnavailable, PeerTimeout) as e:
            self._drop(node_id)
            raise NodeUnavailable(f"store node {node_id}: {e}") from e
        except RemoteError as e:
            raise StoreError(f"store node {node_id} at {address} refused the request: {e.detail}") from e

    def _drop(self, node_id: str) -> None:
        """Forget a failed connection: the next request dials afresh (the node may have restarted)."""
        self._forget_arena(node_id)
        conn = self._connections.pop(node_id, None)
        if conn is not None:
            conn.close()

    def _call(self, node_id: str, address: str, request: Any) -> Any:
        return self._wait(node_id, address, self._submit(node_id, address, request))

    def close(self) -> None:
        with self._lock:
            for conn in self._connections.values():
                conn.close()
            self._connections.clear()
            for node_id in list(self._arenas):
                self._forget_arena(node_id)
        self.index.close()

    def __enter__(self) -> StoreClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _copy_out(arena: SharedRegion, offset: int, spec: ChunkSpec, where: str) -> torch.Tensor:
    """A tensor of the reader's own with the chunk's bytes, checked against its producer's
    checksum (a pin that lapsed and a slot reused meanwhile is caught here, never served)."""
    import torch

    out = torch.empty(spec.nbytes, dtype=torch.uint8)
    try:
        arena.read_into(offset, out.numpy())
    except ValueError as e:
        raise CorruptBuffer(f"{where}: {e}", None, None) from None
    if digest(out.numpy()) != spec.checksum:
        raise CorruptBuffer(f"{where}: its bytes do not match their checksum", None, None)
    return out.view(getattr(torch, spec.dtype)).reshape(spec.shape)


def _check_keys(keys: Sequence[bytes]) -> None:
    for i, key in enumerate(keys):
        if not isinstance(key, bytes) or not key:
            raise ValueError(f"keys must be non-empty bytes (kvstore.keys.chain_keys); key #{i} is {key!r}")


def _assign(
    keys: Sequence[bytes], holdings: list[Holding], preferred: str | None, spread: bytes = b""
) -> dict[str, tuple[str, list[int]]]:
    """``{node_id: (address, positions of the keys to fetch there)}``: the preferred node when it
    holds a key, else a holder with the key in memory before one with it on disk only, and among
    equals the one ``spread`` (a client's own random bytes) ranks first: one client keeps to one
    copy of a replicated chunk, different clients spread over the copies. Raises ``KeyError`` for
    the first key nobody holds."""
    rank = {h.node_id: zlib.crc32(spread + h.node_id.encode()) for h in holdings}
    plan: dict[str, tuple[str, list[int]]] = {}
    for i, key in enumerate(keys):
        holder = min(
            (h for h in holdings if h.held[i]),
            key=lambda h: (h.node_id != preferred, not h.in_memory(i), rank[h.node_id]),
            default=None,
        )
        if holder is None:
            raise KeyError(f"key {key_hex(key)} (#{i}) is not held by any live store node")
        plan.setdefault(holder.node_id, (holder.address, []))[1].append(i)
    return plan


def _batches(sizes: list[int], max_bytes: int) -> list[tuple[int, int]]:
    """``[start, stop)`` ranges of ``sizes`` each summing to at most ``max_bytes`` (or one item)."""
    ranges, start, total = [], 0, 0
    for i, size in enumerate(sizes):
        if i > start and total + size > max_bytes:
            ranges.append((start, i))
            start, total = i, 0
        total += size
    if start < len(sizes):
        ranges.append((start, len(sizes)))
    return ranges
