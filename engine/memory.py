"""Sizing the KV cache from free memory, and host-allocator tuning for CPU serving."""

from __future__ import annotations

import ctypes
import logging
import sys

import torch

from engine.config import EngineConfig

log = logging.getLogger("tandem.engine")

# Cap for CPU pools when sized automatically: several workers usually share one host.
_CPU_AUTO_CAP_BYTES = 4 << 30


def available_memory_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("cannot read MemAvailable from /proc/meminfo; pass num_pages explicitly")


def size_kv_cache(config: EngineConfig, page_bytes: int, max_model_len: int) -> int:
    """Pages for ``kv_cache_memory_fraction`` of free memory (capped on CPU), at least one full
    context's worth so that any admissible request fits."""
    device = torch.device(config.device)
    budget = int(available_memory_bytes(device) * config.kv_cache_memory_fraction)
    if device.type == "cpu":
        budget = min(budget, _CPU_AUTO_CAP_BYTES)
    num_pages = max(budget // page_bytes, -(-max_model_len // config.page_size))
    return num_pages


def tune_host_allocator() -> None:
    """Keep large activations in glibc's heap instead of fresh mmaps.

    By default every allocation over 128 KiB is a new mmap, so each forward pass page-faults its
    activations in again; on CPU that costs more than some of the matmuls. Raising the mmap and
    trim thresholds lets freed blocks be reused. A no-op off glibc. (mallopt takes a C ``int``: a
    4 GiB trim threshold once arrived as 0, trimming at every free.)
    """
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    # a store node sets the same (kvstore.node_main.keep_received_frames_warm)
    m_trim_threshold, m_mmap_threshold = -1, -3
    ok = libc.mallopt(m_mmap_threshold, 32 << 20) and libc.mallopt(m_trim_threshold, 1 << 30)
    if not ok:
        log.debug("mallopt refused the allocator thresholds; continuing with defaults")
