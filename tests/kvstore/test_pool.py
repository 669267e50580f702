"""The node's memory: slot arena and chunk pool (LRU, high-water mark, pins). Pure logic."""

from __future__ import annotations

import pytest

from kvstore.arena import SlotArena
from kvstore.pool import ChunkPool


def make_pool(num_slots: int = 10, slot_bytes: int = 8, watermark: float = 0.9) -> ChunkPool:
    return ChunkPool(SlotArena(num_slots * slot_bytes, slot_bytes), watermark)


def key(i: int) -> bytes:
    return i.to_bytes(16, "big")


def put(pool: ChunkPool, i: int, nbytes: int = 8) -> bool:
    return pool.put(key(i), bytes([i % 256]) * nbytes, "uint8", (nbytes,))


def test_put_get_returns_the_bytes_in_place():
    pool = make_pool()
    assert pool.put(key(1), b"abcdefgh", "uint8", (8,))
    chunk = pool.get(key(1))
    assert chunk is not None and bytes(pool.view(chunk)) == b"abcdefgh"
    assert (chunk.dtype, chunk.shape) == ("uint8", (8,))
    assert pool.get(key(2)) is None
    assert (pool.hits, pool.misses) == (1, 1)


def test_slot_size_is_fixed_by_the_first_chunk_and_bounds_the_rest():
    pool = ChunkPool(SlotArena(10 * 8192))
    put(pool, 1, nbytes=8192)
    assert (pool.arena.slot_bytes, pool.arena.num_slots) == (8192, 10)
    assert put(pool, 2, nbytes=4)  # smaller chunks fit a slot
    with pytest.raises(ValueError, match="--slot-bytes 8193"):
        put(pool, 3, nbytes=8193)
    with pytest.raises(ValueError, match="non-empty"):
        pool.put(key(4), b"", "uint8", (0,))
    tiny_first = ChunkPool(SlotArena(1 << 30))
    put(tiny_first, 1, nbytes=1)  # would be a billion 1-byte slots
    assert tiny_first.arena.slot_bytes == 4096 and tiny_first.arena.num_used == 1
    with pytest.raises(ValueError, match="slot_bytes must be in"):
        put(ChunkPool(SlotArena(100)), 1, nbytes=101)


def test_evicts_least_recently_used_at_the_high_water_mark():
    pool = make_pool(num_slots=10)  # high-water mark: 9 slots
    for i in range(9):
        assert put(pool, i)
    pool.get(key(0))  # 0 becomes most recently used: 1 is now the oldest
    assert put(pool, 9)
    assert pool.take_evicted() == [key(1)]
    assert pool.num_chunks == 9 and pool.arena.num_used == 9
    assert not pool.contains(key(1)) and pool.contains(key(0))
    assert pool.take_evicted() == []


def test_a_chain_is_evicted_from_its_tail():
    pool = make_pool(num_slots=4, watermark=1.0)
    put(pool, 9)
    chain = [key(i) for i in range(3)]
    for i in range(3):
        put(pool, i)
    pool.touch_chain(chain)
    for i in range(10, 14):  # four new chunks evict everything, oldest first
        put(pool, i)
    assert pool.take_evicted() == [key(9), key(2), key(1), key(0)]


def test_a_reserved_chunk_is_pinned_until_written_and_released():
    pool = make_pool(num_slots=2, watermark=1.0)
    chunk = pool.reserve(key(1), 8, "uint8", (8,))
    assert chunk is not None and pool.contains(key(1)) and pool.num_pinned == 1
    put(pool, 2)
    assert put(pool, 3) is True and pool.take_evicted() == [key(2)]  # not the chunk being written
    pool.write(chunk, b"12345678")
    pool.release(chunk)
    assert bytes(pool.view(pool.get(key(1)))) == b"12345678" and pool.num_pinned == 0


def test_putting_a_held_key_only_touches_it():
    pool = make_pool(num_slots=3, watermark=1.0)
    for i in range(3):
        put(pool, i)
    assert put(pool, 0)  # touch: 1 is now the oldest
    put(pool, 3)
    assert pool.take_evicted() == [key(1)]


def test_pinned_chunks_are_never_evicted():
    pool = make_pool(num_slots=4, watermark=0.5)  # high-water mark: 2 slots
    put(pool, 0)
    pinned = pool.get(key(0))
    pool.pin(pinned)
    for i in range(1, 20):
        assert put(pool, i)
    assert pool.contains(key(0)) and key(0) not in pool.take_evicted()
    assert bytes(pool.view(pinned)) == bytes([0]) * 8
    pool.release(pinned)
    put(pool, 20)
    put(pool, 21)
    assert key(0) in pool.take_evicted()


def test_headroom_above_the_watermark_absorbs_writes_while_pinned_then_put_returns_false():
    pool = make_pool(num_slots=3, watermark=0.34)  # high-water mark: 1 slot
    chunks = []
    for i in range(3):
        assert put(pool, i)
        chunks.append(pool.get(key(i)))
        pool.pin(chunks[-1])
    assert pool.arena.num_used == 3 and pool.num_pinned == 3
    assert put(pool, 3) is False  # every slot pinned: no capacity now
    pool.release(chunks[0])
    assert put(pool, 3) is True and pool.take_evicted() == [key(0)]


def test_deleting_a_pinned_chunk_frees_its_slot_only_on_release():
    pool = make_pool(num_slots=2, watermark=1.0)
    put(pool, 1)
    chunk = pool.get(key(1))
    pool.pin(chunk)
    pool.pin(chunk)
    assert pool.delete(key(1)) and not pool.contains(key(1))
    assert pool.delete(key(1)) is False
    assert pool.arena.num_used == 1  # still pinned: the slot is not reused
    put(pool, 2)
    put(pool, 3)  # only one slot to write to: 3 evicts 2 rather than reuse the pinned slot
    assert pool.take_evicted() == [key(2)]
    assert bytes(pool.view(chunk)) == bytes([1]) * 8
    pool.release(chunk)
    assert pool.arena.num_used == 2
    pool.release(chunk)
    assert pool.arena.num_used == 1 and pool.num_pinned == 0


def test_arena_hands_out_every_slot_once_and_reuses_freed_ones():
    arena = SlotArena(3 * 8, 8)
    slots = [arena.allocate() for _ in range(3)]
    assert sorted(slots) == [0, 1, 2] and arena.allocate() is None and arena.num_used == 3
    arena.free(1)
    assert arena.num_used == 2 and arena.allocate() == 1 and arena.allocate() is None
    arena.view(2, 8)[:] = b"abcdefgh"
    assert bytes(arena.view(2, 3)) == b"abc" and bytes(arena.view(1, 8)) == bytes(8)


def test_arena_rejects_bad_sizes():
    with pytest.raises(ValueError, match="capacity_bytes"):
        SlotArena(0)
    with pytest.raises(ValueError, match="slot_bytes"):
        SlotArena(10, 11)
    with pytest.raises(ValueError, match="evict_watermark"):
        ChunkPool(SlotArena(10), 1.5)
