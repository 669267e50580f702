"""`tandem up` fixes each worker's KV pages once, at start: from --kv-cache-memory, or from the host's
memory left after the store nodes' arenas and the weights."""

from __future__ import annotations

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
