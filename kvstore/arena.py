"""A preallocated block of host memory cut into equal slots, each holding at most one chunk."""

from __future__ import annotations

import mmap

from transfer.shared_memory import SharedRegion

MIN_AUTO_SLOT_BYTES = 4096  # a tiny first chunk must not cut the arena into millions of slots


class SlotArena:
    """``capacity_bytes`` of page-aligned host memory, committed up front (no page faults on the
    write path, and a node that cannot get its memory fails at start), split into slots.

    If ``slot_bytes`` is None the slot size is fixed by the first ``fit`` call (the first chunk
    stored, at least ``MIN_AUTO_SLOT_BYTES``): every chunk of one model has the same size, so the
    deployment does not have to compute it. Invariant: a slot is free (in ``_free`` or at or past
    ``_next_unused``) or handed out, never both; bookkeeping is O(slots handed out), not O(slots).

    With ``shared``, the memory is a ``transfer.shared_memory.SharedRegion`` that other processes
    of this host can map through ``path``: its first page holds ``token`` (random bytes a mapper
    checks), the slots follow (``offset``). Without memfd support the arena is private (``path``
    None).
    """

    def __init__(self, capacity_bytes: int, slot_bytes: int | None = None, shared: bool = False) -> None:
        if capacity_bytes <= 0:
            raise ValueError(f"capacity_bytes must be positive, got {capacity_bytes}")
        self.capacity_bytes = capacity_bytes
        self.path: str | None = None
        self.token = b""
        self._header = 0
        populate = getattr(mmap, "MAP_POPULATE", 0)
        region = SharedRegion.create(mmap.PAGESIZE + capacity_bytes) if shared else None
        if region is not None:  # the token's page, then the slots
            self._header, self.path, self.token = mmap.PAGESIZE, region.path, region.token
            self._view = region.view(mmap.PAGESIZE, capacity_bytes)
        else:
            flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | populate
            memory = mmap.mmap(-1, capacity_bytes, flags=flags)
            if not populate:  # not Linux: commit the pages by touching them
                memory[:: mmap.PAGESIZE] = bytes(len(range(0, capacity_bytes, mmap.PAGESIZE)))
            self._view = memoryview(memory)
        self._region = region
        self.slot_bytes = 0
        self.num_slots = 0
        self._free: list[int] = []  # released slots, reused first
        self._next_unused = 0  # slots from here on have never been handed out
        if slot_bytes is not None:
            self._partition(slot_bytes)

    def _partition(self, slot_bytes: int) -> None:
        if not 0 < slot_bytes <= self.capacity_bytes:
            raise ValueError(
                f"slot_bytes must be in (0, capacity_bytes={self.capacity_bytes}], got {slot_bytes}; "
                "raise --capacity-bytes or lower --slot-bytes"
            )
        self.slot_bytes = slot_bytes
        self.num_slots = self.capacity_bytes // slot_bytes

    def fit(self, nbytes: int) -> None:
        """Check that a chunk of ``nbytes`` fits one slot, fixing the slot size if still unset."""
        if nbytes <= 0:
            raise ValueError(f"chunks must be non-empty, got {nbytes} bytes")
        if self.slot_bytes == 0:
            self._partition(max(nbytes, min(MIN_AUTO_SLOT_BYTES, self.capacity_bytes)))
        elif nbytes > self.slot_bytes:
            raise ValueError(
                f"chunk of {nbytes} bytes exceeds the slot size {self.slot_bytes}; "
                f"start the store node with --slot-bytes {nbytes} or more"
            )

    def allocate(self) -> int | None:
        """A free slot, or None when every slot is in use."""
        if self._free:
            return self._free.pop()
        if self._next_unused < self.num_slots:
            self._next_unused += 1
            return self._next_unused - 1
        return None

    def free(self, slot: int) -> None:
        assert 0 <= slot < self.num_slots, f"slot {slot} out of range"
        self._free.append(slot)

    def view(self, slot: int, nbytes: int) -> memoryview:
        """The first ``nbytes`` of ``slot`` (writable, no copy)."""
        assert 0 <= slot < self.num_slots and 0 < nbytes <= self.slot_bytes
        start = slot * self.slot_bytes
        return self._view[start : start + nbytes]

    def offset(self, slot: int) -> int:
        """Where ``slot`` starts in the shared file (``path``)."""
        assert 0 <= slot < self.num_slots
        return self._header + slot * self.slot_bytes

    @property
    def size(self) -> int:
        """Bytes of the shared file (the token's page and the slots); 0 if private."""
        return self._region.size if self._region is not None else 0

    @property
    def num_used(self) -> int:
        return self._next_unused - len(self._free)
