"""The conductor's latency predictions: its cost lines, a worker's own fit, and the KV bytes a
fetch moves."""

from __future__ import annotations

import dataclasses

import pytest

from router.conductor import PrefillCandidate
from router.conductor.costs import MIN_FITTED_STEPS, fetch_time_s, predicted_tbt_s, predicted_ttft_s
from router.conductor.policies import cache_aware
from router.conductor.prefix import prefill_candidate
from tests.router.conductor.workers import COSTS, SLO, problem, worker
from worker.types import WorkerLoad


def test_cost_model_lines():
    assert fetch_time_s(COSTS, 0) == 0
    assert fetch_time_s(COSTS, 100) == pytest.approx(0.001 + 100 * 10_000 * 1e-9)
    idle = PrefillCandidate(worker("p"))
    assert predicted_ttft_s(COSTS, idle, 1000) == pytest.approx(0.01 + 1.0)
    busy = PrefillCandidate(worker("p", queued_prefill_tokens=500, num_waiting=2))
    assert predicted_ttft_s(COSTS, busy, 1000) == pytest.approx(0.5 + 0.02 + 1.01)
    assert predicted_tbt_s(COSTS, WorkerLoad(step_ms=50, num_waiting=1)) == pytest.approx(0.05 + 0.002)
    assert predicted_tbt_s(COSTS, WorkerLoad()) == pytest.approx(0.02 + 0.001)


def test_the_attention_term_grows_with_the_cached_prefix():
    costs = dataclasses.replace(COSTS, prefill_per_token_context_s=1e-6)
    # 1000 tokens after 3000 cached (a 4000-token prompt): each attends to 3000 + half the new ones
    cached = PrefillCandidate(worker("p"), 3000)
    assert predicted_ttft_s(costs, cached, 4000) == pytest.approx(0.01 + 1.0 + 1e-6 * 1000 * (3000 + 500))
    assert predicted_ttft_s(costs, PrefillCandidate(worker("p")), 1000) == pytest.approx(
        0.01 + 1.0 + 1e-6 * 1000 * 500
    )


def test_a_worker_s_own_fitted_line_replaces_the_configured_one():
    fitted = {"step_fixed_s": 0.05, "step_per_token_s": 0.002}
    young = PrefillCandidate(worker("p", **fitted, step_samples=MIN_FITTED_STEPS - 1))
    assert predicted_ttft_s(COSTS, young, 1000) == pytest.approx(0.01 + 1.0)  # too few steps: configured
    seasoned = PrefillCandidate(
        worker("p", **fitted, step_samples=MIN_FITTED_STEPS, queued_prefill_tokens=500)
    )
    assert predicted_ttft_s(COSTS, seasoned, 1000) == pytest.approx(0.002 * 500 + 0.05 + 2.0)
    # a slow worker with the hit loses to a fast one without it
    slow = PrefillCandidate(worker("p0", step_fixed_s=0.05, step_per_token_s=0.01, step_samples=50), 512)
    fast = PrefillCandidate(worker("p1", step_fixed_s=0.01, step_per_token_s=0.001, step_samples=50))
    assert cache_aware(problem([slow, fast], [worker("d", "decode")]), COSTS, SLO).prefill.worker_id == "p1"


def test_cached_tokens_never_cover_the_last_prompt_token():
    full = PrefillCandidate(worker("p"), cached_local_tokens=1024)
    assert predicted_ttft_s(COSTS, full, 1024) == pytest.approx(0.01 + 0.001)


# SmolLM2-135M in float32, by hand: 30 layers x 2 (K and V) x 3 KV heads x 64 dims x 4 bytes
SMOLLM2_F32_BYTES_PER_TOKEN = 46_080


def test_a_fetch_moves_the_kv_bytes_the_worker_publishes():
    own = dataclasses.replace(COSTS, kv_bytes_per_token=0)  # no override: each worker's own bytes
    fetch = PrefillCandidate(worker("p", kv_bytes_per_token=SMOLLM2_F32_BYTES_PER_TOKEN), 0, 960)
    # 40 uncached tokens prefilled, 960 fetched: 1 ms + 960 x 46,080 B x 1 ns/B (cheaper than 960 ms)
    assert predicted_ttft_s(own, fetch, 1000) == pytest.approx(0.01 + 0.04 + 0.001 + 0.0442368)
    # the configured bytes override the worker's
    assert predicted_ttft_s(COSTS, fetch, 1000) == pytest.approx(0.01 + 0.04 + 0.001 + 0.0096)
    unknown = PrefillCandidate(worker("p"), 0, 960)  # neither says: the fetch's fixed cost only
    assert predicted_ttft_s(own, unknown, 1000) == pytest.approx(0.01 + 0.04 + 0.001)


def test_a_worker_with_heavier_kv_fetches_slower():
    own = dataclasses.replace(COSTS, kv_bytes_per_token=0)
    light = PrefillCandidate(worker("p0", kv_bytes_per_token=SMOLLM2_F32_BYTES_PER_TOKEN // 2), 0, 960)
    heavy = PrefillCandidate(worker("p1", kv_bytes_per_token=SMOLLM2_F32_BYTES_PER_TOKEN), 0, 960)
    assert predicted_ttft_s(own, light, 1000) < predicted_ttft_s(own, heavy, 1000)
    decode = [worker("d", "decode")]
    assert cache_aware(problem([heavy, light], decode), own, SLO).prefill.worker_id == "p0"


def test_cached_tokens_on_a_disk_tier_add_their_read():
    # 1 ms a read + 0.5 ns a byte, at COSTS' 10,000 KV bytes a token: 960 tokens read = 1 + 4.8 ms
    disk = dataclasses.replace(COSTS, disk_fixed_s=0.001, disk_per_byte_s=0.5e-9)
    in_memory = PrefillCandidate(worker("p"), 960)
    on_disk = PrefillCandidate(worker("p"), 960, 0, cached_disk_tokens=960)
    assert predicted_ttft_s(disk, on_disk, 1000) - predicted_ttft_s(disk, in_memory, 1000) == pytest.approx(
        0.001 + 0.0048
    )
    assert predicted_ttft_s(COSTS, on_disk, 1000) == predicted_ttft_s(COSTS, in_memory, 1000)  # unpriced
    # only the cached tokens used are read: a 500-token prompt reuses 499 of the 960
    assert predicted_ttft_s(disk, on_disk, 500) - predicted_ttft_s(disk, in_memory, 500) == pytest.approx(
        0.001 + 499 * 10_000 * 0.5e-9
    )
    # a memory hit elsewhere can beat a disk hit on the worker's own node
    fetch = PrefillCandidate(worker("p1"), 0, 960)
    slow_disk = dataclasses.replace(COSTS, disk_fixed_s=0.001, disk_per_byte_s=5e-9)
    own_disk = PrefillCandidate(worker("p0"), 960, 0, cached_disk_tokens=960)
    route = cache_aware(problem([own_disk, fetch], [worker("d", "decode")]), slow_disk, SLO)
    assert route.prefill.worker_id == "p1"


def test_the_index_s_disk_only_chunks_become_the_candidate_s_disk_tokens():
    p = worker("p")  # store node store-p, 64-token chunks
    candidate = prefill_candidate(p, {"store-p": 3, "store-q": 5}, anywhere=5, on_disk=2)
    assert (candidate.cached_local_tokens, candidate.cached_store_tokens, candidate.cached_disk_tokens) == (
        192,
        128,
        128,
    )
    assert prefill_candidate(p, {}, anywhere=0, on_disk=0) == PrefillCandidate(p)
