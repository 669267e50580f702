"""The disk tier's part of ``bench.transfer``: raw tier throughput, and a disk hit through a node.

- ``DiskTier`` in this process: writing ``chunks`` chunk files (into the page cache, as a node
  spills them), reading them back cold (written back to the device and dropped from the page cache
  with ``posix_fadvise``, so the read comes from the device) and warm (from the page cache);
- a store node process with a memory tier of two slots and a disk tier: fetching one chunk that
  it holds on disk only (every fetch in the cycle reads a different chunk from disk, promotes it,
  and the chunk it displaces already has its file), against fetching one from memory;
- the conductor's disk cost line, ``disk_s = fixed_s + per_byte_s * bytes``: the cold read's
  seconds per byte, and the median disk hit's extra latency over a memory hit beyond those bytes.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from kvstore.disk import DiskTier


def _drop_page_cache(path: Path) -> None:
    """Write the files back to the device and drop their pages, so the next read hits the device."""
    os.sync()
    for file in path.glob("*.kv"):
        fd = os.open(file, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def tier_throughput(chunk_bytes: int, num_chunks: int, directory: Path) -> dict:
    """GiB/s of writing, reading cold and reading warm ``num_chunks`` chunk files, and the
    per-chunk cold read times (for the cost line)."""
    tier = DiskTier(directory, 2 * num_chunks * chunk_bytes, chunk_bytes)
    data = [
        memoryview(torch.randint(0, 255, (chunk_bytes,), dtype=torch.uint8).numpy())
        for _ in range(num_chunks)
    ]
    keys = [f"disk-bench-{i}".encode() for i in range(num_chunks)]
    start = time.perf_counter()
    for key, chunk in zip(keys, data):
        assert tier.write(key, chunk, "uint8", (chunk_bytes,), None)
    write_s = time.perf_counter() - start
    out = memoryview(bytearray(chunk_bytes))
    _drop_page_cache(directory)
    cold = []
    for key in keys:
        begin = time.perf_counter()
        assert tier.read_into(key, out)
        cold.append(time.perf_counter() - begin)
    start = time.perf_counter()
    for key in keys:
        assert tier.read_into(key, out)
    warm_s = time.perf_counter() - start
    total = num_chunks * chunk_bytes / (1 << 30)
    return {
        "write_gib_s": round(total / write_s, 3),
        "read_cold_gib_s": round(total / sum(cold), 3),
        "read_warm_gib_s": round(total / warm_s, 3),
        "cold_read_s_per_chunk": cold,
    }


def disk_hit_latency(client, chunks: list[torch.Tensor], samples: int, bar) -> list[float]:
    """Seconds per ``get`` of one chunk that ``client``'s node holds on disk only (its memory keeps
    two chunks; the cycle over ``chunks`` always asks for one it evicted)."""
    keys = [f"disk-hit-{i}".encode().ljust(16, b".") for i in range(len(chunks))]
    for key, chunk in zip(keys, chunks):
        assert client.put([key], [chunk]) == [True]
    times = []
    for i in range(samples):
        start = time.perf_counter()
        client.get([keys[i % len(keys)]])
        times.append(time.perf_counter() - start)
        bar.update()
    return times


def disk_cost_model(chunk_bytes: int, cold: list[float], hit: list[float], memory_hit: list[float]) -> dict:
    per_byte_s = statistics.median(cold) / chunk_bytes
    extra = statistics.median(hit) - statistics.median(memory_hit)
    return {"fixed_s": max(0.0, extra - per_byte_s * chunk_bytes), "per_byte_s": per_byte_s}


def scratch_dir() -> tempfile.TemporaryDirectory:
    """A directory on the disk a node would use (``$TMPDIR``, else /var/tmp: /tmp may be memory)."""
    return tempfile.TemporaryDirectory(prefix="tandem-disk-bench-", dir=os.environ.get("TMPDIR", "/var/tmp"))
