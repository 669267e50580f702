"""Chunks by key in a slot arena: LRU eviction at a high-water mark, pins for chunks in use."""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from kvstore.arena import SlotArena


@dataclass(eq=False)
class Chunk:
    """One stored chunk: where its bytes are and how to read them back."""

    slot: int
    nbytes: int
    dtype: str
    shape: tuple[int, ...]
    checksum: int | None = None  # its producer's (transfer.wire), sent back with the bytes
    pins: int = 0
    deleted: bool = False  # dropped from the table while pinned: its slot is freed on last release
    ready: bool = True  # False while a client writes its bytes in place (not served until committed)


class ChunkPool:
    """Stores chunks in an arena, evicting the least recently used to keep room for writes.

    - Before a new chunk takes a slot, LRU chunks are evicted until the used slots are below
      ``floor(evict_watermark * num_slots)`` (Mooncake evicts at ~90 %). The rest is headroom
      for pinned chunks: reads in flight, and the chunks of one batch while they are written.
    - A pinned chunk (its bytes are being sent) is never evicted, and its slot is never reused
      until the last pin is released, even if the chunk is deleted meanwhile.
    - A chunk being written is pinned too, from ``reserve`` to ``release``.
    - Evicted keys accumulate until ``take_evicted`` so the caller can update the index; ``spill``,
      if given, is called with each evicted chunk while its bytes are still in the arena (the
      node's disk tier keeps a copy there).
    """

    def __init__(
        self,
        arena: SlotArena,
        evict_watermark: float = 0.9,
        spill: Callable[[bytes, Chunk, memoryview], None] | None = None,
    ) -> None:
        if not 0 < evict_watermark <= 1:
            raise ValueError(f"evict_watermark must be in (0, 1], got {evict_watermark}")
        self.arena = arena
        self.evict_watermark = evict_watermark
        self._chunks: OrderedDict[bytes, Chunk] = OrderedDict()  # least recently used first
        self._evicted: list[bytes] = []
        self._spill = spill
        self.num_pinned = 0
        self.hits = 0
        self.misses = 0
        self.num_evicted = 0

    def check_fits(self, nbytes: int) -> None:
        """Raise ``ValueError`` unless a chunk of ``nbytes`` can be stored (see ``SlotArena.fit``)."""
        self.arena.fit(nbytes)

    def put(self, key: bytes, data: Any, dtype: str, shape: tuple[int, ...]) -> bool:
        """Store a copy of ``data`` under ``key``; False if no slot is free or evictable now.
        (``touch`` + ``reserve`` + ``write`` + ``release`` in one call.)"""
        if self.touch(key):
            return True
        if self.busy(key):
            return False
        chunk = self.reserve(key, memoryview(data).nbytes, dtype, shape)
        if chunk is None:
            return False
        self.write(chunk, data)
        self.release(chunk)
        return True

    def touch(self, key: bytes) -> bool:
        """Mark ``key`` most recently used; False if it is not held (a chunk another process is
        still writing in place is not: see ``busy``). Keys name their content, so putting a held
        key only touches it."""
        chunk = self._chunks.get(key)
        if chunk is None or not chunk.ready:
            return False
        self._chunks.move_to_end(key)
        return True

    def busy(self, key: bytes) -> bool:
        """``key`` is reserved and its bytes not yet committed: it can be neither served nor
        reserved again until that write commits or is dropped."""
        chunk = self._chunks.get(key)
        return chunk is not None and not chunk.ready

    def touch_chain(self, keys: list[bytes]) -> None:
        """Mark a chain's held keys most recently used, its head last: a chain's head is worth
        more than its tail (every later key needs it), so the tail is evicted first."""
        for key in reversed(keys):
            if key in self._chunks:
                self._chunks.move_to_end(key)

    def reserve(
        self,
        key: bytes,
        nbytes: int,
        dtype: str,
        shape: tuple[int, ...],
        checksum: int | None = None,
        ready: bool = True,
    ) -> Chunk | None:
        """A slot for a new chunk under ``key``, evicting as needed; None if no slot is free or
        evictable now. The chunk is listed at once and pinned (being written, it is never
        evicted): ``write`` its bytes, then ``release`` it. With ``ready`` False it is not served
        (``get``, ``contains``, ``keys``) until ``commit``: its bytes are written by another process."""
        assert key not in self._chunks, "reserve() of a held key: touch() it instead"
        self.arena.fit(nbytes)
        high_water = max(1, math.floor(self.evict_watermark * self.arena.num_slots))
        while self.arena.num_used >= high_water and self._evict_one():
            pass
        slot = self.arena.allocate()
        if slot is None:
            return None
        chunk = Chunk(slot, nbytes, dtype, tuple(shape), checksum, ready=ready)
        self._chunks[key] = chunk
        self.pin(chunk)
        return chunk

    def write(self, chunk: Chunk, data: Any) -> None:
        """Copy ``data`` into a reserved chunk's slot (numpy releases the GIL while it copies)."""
        assert chunk.pins > 0, "writing an unpinned chunk"
        source = np.frombuffer(data, dtype=np.uint8)
        assert source.nbytes == chunk.nbytes, f"{source.nbytes} bytes for a chunk of {chunk.nbytes}"
        np.copyto(np.frombuffer(self.view(chunk), dtype=np.uint8), source)

    def commit(self, chunk: Chunk) -> None:
        """A chunk reserved with ``ready`` False has its bytes: serve it from now on."""
        chunk.ready = True

    def get(self, key: bytes) -> Chunk | None:
        """The chunk under ``key`` (now most recently used), or None; counts a hit or a miss."""
        chunk = self._chunks.get(key)
        if chunk is None or not chunk.ready:
            self.misses += 1
            return None
        self.hits += 1
        self._chunks.move_to_end(key)
        return chunk

    def contains(self, key: bytes) -> bool:
        chunk = self._chunks.get(key)
        return chunk is not None and chunk.ready

    def view(self, chunk: Chunk) -> memoryview:
        """The chunk's bytes, in place. Pin the chunk for as long as the view is in use."""
        return self.arena.view(chunk.slot, chunk.nbytes)

    def pin(self, chunk: Chunk) -> None:
        assert not chunk.deleted, "pinning a deleted chunk"
        chunk.pins += 1
        self.num_pinned += chunk.pins == 1

    def release(self, chunk: Chunk) -> None:
        assert chunk.pins > 0, "releasing an unpinned chunk"
        chunk.pins -= 1
        if chunk.pins == 0:
            self.num_pinned -= 1
            if chunk.deleted:
                self.arena.free(chunk.slot)

    def delete(self, key: bytes) -> bool:
        """Drop ``key``; False if it was not held. A pinned chunk's slot is freed on release."""
        chunk = self._chunks.pop(key, None)
        if chunk is None:
            return False
        self._drop(chunk)
        return True

    def spill_all(self) -> int:
        """Hand every chunk to ``spill`` (least recently used first) without evicting it: what a
        node with a disk tier does as it shuts down, so that a restart finds everything (chunks
        being read too: their bytes are settled). Chunks not yet committed are skipped. Returns
        how many were handed over."""
        if self._spill is None:
            return 0
        ready = [(key, chunk) for key, chunk in self._chunks.items() if chunk.ready]
        for key, chunk in ready:
            self._spill(key, chunk, self.view(chunk))
        return len(ready)

    def take_evicted(self) -> list[bytes]:
        """Keys evicted since the last call."""
        evicted, self._evicted = self._evicted, []
        return evicted

    def keys(self) -> list[bytes]:
        return [key for key, chunk in self._chunks.items() if chunk.ready]

    def _evict_one(self) -> bool:
        for key, chunk in self._chunks.items():
            if chunk.pins == 0:
                del self._chunks[key]
                if self._spill is not None:
                    self._spill(key, chunk, self.view(chunk))
                self._drop(chunk)
                self._evicted.append(key)
                self.num_evicted += 1
                return True
        return False

    def _drop(self, chunk: Chunk) -> None:
        if chunk.pins:
            chunk.deleted = True
        else:
            self.arena.free(chunk.slot)

    @property
    def num_chunks(self) -> int:
        return len(self._chunks)

    @property
    def bytes_used(self) -> int:
        return self.arena.num_used * self.arena.slot_bytes
