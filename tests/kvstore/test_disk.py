"""The disk tier on its own: files that survive a restart, LRU within its capacity, and files that
went bad (truncated, another size, a crash's temporary) never read as chunks."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kvstore.disk import DiskTier

CHUNK = 4096


def payload(i: int) -> memoryview:
    return memoryview(bytes([i % 251]) * CHUNK)


def key(i: int) -> bytes:
    return b"k" + i.to_bytes(15, "big")


def read(tier: DiskTier, k: bytes) -> bytes | None:
    entry = tier.entry(k)
    if entry is None:
        return None
    out = bytearray(entry.nbytes)
    return bytes(out) if tier.read_into(k, memoryview(out)) else None


def test_a_chunk_reads_back_with_its_description(tmp_path: Path):
    tier = DiskTier(tmp_path, 1 << 20, CHUNK)
    assert tier.write(key(1), payload(1), "float32", (2, 512), 0xDEADBEEF)
    entry = tier.entry(key(1))
    assert (entry.nbytes, entry.dtype, entry.shape, entry.checksum) == (
        CHUNK,
        "float32",
        (2, 512),
        0xDEADBEEF,
    )
    assert read(tier, key(1)) == bytes(payload(1))
    assert tier.hits == 1 and tier.num_chunks == 1
    assert tier.write(key(1), payload(9), "float32", (2, 512), 1)  # held: a touch, the bytes stay
    assert read(tier, key(1)) == bytes(payload(1)) and tier.num_written == 1


def test_the_least_recently_used_files_go_to_stay_under_capacity(tmp_path: Path):
    tier = DiskTier(tmp_path, 3 * CHUNK + 600, CHUNK)  # three files (headers included), not four
    for i in range(3):
        tier.write(key(i), payload(i), "uint8", (CHUNK,), i)
    assert read(tier, key(0)) is not None  # 0 is now the most recently used
    tier.write(key(3), payload(3), "uint8", (CHUNK,), 3)
    assert tier.take_dropped() == [key(1)]
    assert sorted(tier.stored_keys()) == sorted([key(0), key(2), key(3)])
    assert tier.bytes_used <= tier.capacity_bytes
    assert len(list(tmp_path.glob("*.kv"))) == 3 and tier.num_evicted == 1


def test_a_restart_on_the_same_path_adopts_every_chunk_in_lru_order(tmp_path: Path):
    tier = DiskTier(tmp_path, 1 << 20, CHUNK)
    for i in range(4):
        tier.write(key(i), payload(i), "uint8", (CHUNK,), i)
        os.utime(tier._file(key(i)), ns=(10**18 + i, 10**18 + i))  # distinct mtimes on any filesystem
    again = DiskTier(tmp_path, 1 << 20, CHUNK)
    assert again.stored_keys() == [key(i) for i in range(4)]
    assert all(read(again, key(i)) == bytes(payload(i)) for i in range(4))
    assert again.entry(key(2)).checksum == 2
    smaller = DiskTier(tmp_path, 2 * CHUNK + 400, CHUNK)  # restarted with less disk: the oldest go
    assert smaller.stored_keys() == [key(2), key(3)]


def test_unusable_files_are_deleted_at_start_and_at_read(tmp_path: Path):
    tier = DiskTier(tmp_path, 1 << 20, CHUNK)
    for i in range(4):
        tier.write(key(i), payload(i), "uint8", (CHUNK,), i)
    with open(tier._file(key(0)), "r+b") as f:
        f.truncate(CHUNK // 2)  # a crash of the disk, not of ours (ours write then rename)
    (tmp_path / f"{key(9).hex()}.tmp").write_bytes(b"half a chunk")  # our crash mid-write
    (tmp_path / "zz.kv").write_bytes(b"not even a key")
    other = DiskTier(tmp_path / "other", 1 << 20, 0)
    other.write(key(5), memoryview(b"x" * 100), "uint8", (100,), None)
    os.replace(other._file(key(5)), tmp_path / other._file(key(5)).name)  # another model's size

    again = DiskTier(tmp_path, 1 << 20, CHUNK)
    assert sorted(again.stored_keys()) == sorted([key(1), key(2), key(3)])
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == sorted(
        f"{key(i).hex()}.kv" for i in (1, 2, 3)
    )

    with open(again._file(key(2)), "r+b") as f:  # cut after the node adopted it
        f.truncate(CHUNK)
    assert read(again, key(2)) is None
    assert again.take_dropped() == [key(2)] and not again.contains(key(2))
    assert not again._file(key(2)).exists()


def test_a_chunk_larger_than_the_tier_is_refused(tmp_path: Path):
    tier = DiskTier(tmp_path, CHUNK, 0)
    assert not tier.write(key(0), payload(0), "uint8", (CHUNK,), None)
    assert tier.num_chunks == 0 and not list(tmp_path.iterdir())
    with pytest.raises(ValueError, match="positive"):
        DiskTier(tmp_path, 0)
