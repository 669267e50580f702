"""`tandem up` fixes each worker's KV pages once, at start: from --kv-cache-memory, or from the host's
memory left after the store nodes' arenas and the weights."""

from __future__ import annotations

import pytest

from cluster.launcher import ClusterConfig, LocalCluster, default_kv_budget

GiB = 1 << 30
# SmolLM2-135M in float32: 30 layers x (K, V) x 3 KV heads x 16 tokens x 64 dims x 4 bytes
PAGE_BYTES = 30 * 2 * 3 * 16 * 64 * 4


def test_the_default_budget_by_hand():
    # 24 GiB available, 3 GiB of store arenas, 3 engines of 0.5 GiB weights: (24 - 3 - 1.5) / 2 / 3
    assert default_kv_budget(24 * GiB, 3 * GiB, GiB // 2, 3) == int(19.5 * GiB) // 2 // 3
    assert default_kv_budget(200 * GiB, 0, GiB, 2) == 4 * GiB  # capped
    assert default_kv_budget(2 * GiB, 3 * GiB, GiB, 3) == 0  # nothing left (a full context still fits)


def test_an_explicit_budget_becomes_pages_and_never_less_than_one_context(default_model):
    def pages(budget: int) -> int:
        cluster = LocalCluster(ClusterConfig(model_dir=default_model, kv_cache_memory_bytes=budget))
        return cluster._kv_pages_per_worker()

    assert pages(GiB) == GiB // PAGE_BYTES
    assert pages(1 << 20) == 8192 // 16  # 1 MiB is one page; the model's 8192-token context needs 512
    explicit = LocalCluster(ClusterConfig(model_dir=default_model, num_pages=77, kv_cache_memory_bytes=GiB))
    assert "--num-pages" in (args := explicit._worker_args()) and args[args.index("--num-pages") + 1] == "77"


def test_int8_kv_shrinks_the_store_chunk_not_the_workers_pages(default_model):
    """--kv-dtype int8: workers are told so and store nodes take chunks of the int8 size (64 dims of
    codes + a 4-byte scale per head vector), while each worker's pages stay float32."""
    auto = LocalCluster(ClusterConfig(model_dir=default_model, kv_cache_memory_bytes=GiB))
    int8 = LocalCluster(ClusterConfig(model_dir=default_model, kv_cache_memory_bytes=GiB, kv_dtype="int8"))
    assert auto._chunk_bytes == PAGE_BYTES * 64 // 16  # 64-token chunks
    assert int8._chunk_bytes == 30 * 2 * 3 * 64 * (64 + 4)
    assert int8._kv_pages_per_worker() == auto._kv_pages_per_worker() == GiB // PAGE_BYTES
    args = int8._worker_args()
    assert args[args.index("--kv-dtype") + 1] == "int8" and "--kv-dtype" not in auto._worker_args()
    with pytest.raises(ValueError, match="kv_dtype"):
        ClusterConfig(model_dir=default_model, kv_dtype="fp8")
