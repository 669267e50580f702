"""The sim-against-real benchmark's pure parts: requests → simulator trace, /metrics → fitted lines →
a calibrated profile, and the comparison it reports."""

from __future__ import annotations

import argparse

import pytest

from bench.sim_agreement import calibrated_profile, compare, fitted_lines, sized_profile, to_trace, verdict
from bench.trace_workload import BenchRequest
from router.conductor.profile import load_profile
from sim.cluster import ClusterShape, SimCluster

ARGS = argparse.Namespace(chunk_tokens=16, num_pages=100, max_num_batched_tokens=256)


def test_requests_sharing_a_prefix_share_exactly_the_chunk_keys_of_their_common_full_chunks():
    a = BenchRequest(0, 0.0, list(range(100, 150)), 4)  # 50 tokens: 3 cacheable chunks of 16
    b = BenchRequest(1, 1.0, list(range(100, 140)) + [7] * 30, 4)  # first 40 tokens equal a's
    ta, tb = to_trace([a, b], 16)
    assert (ta.input_tokens, ta.output_tokens, len(ta.keys)) == (50, 4, 3)
    assert len(tb.keys) == 4  # (70 - 1) // 16
    assert ta.keys[:2] == tb.keys[:2] and ta.keys[2] != tb.keys[2]  # tokens 32..47 differ at 40
    (exact,) = to_trace([BenchRequest(2, 0.0, list(range(100, 132)), 2)], 16)
    assert len(exact.keys) == 1  # the last token is always computed: 32 tokens cache one chunk


METRICS = {
    'tandem_worker_step_fixed_seconds{instance="prefill-0",role="prefill"}': 0.05,
    'tandem_worker_step_seconds_per_token{instance="prefill-0",role="prefill"}': 0.002,
    'tandem_worker_step_fixed_seconds{instance="prefill-1",role="prefill"}': 0.07,
    'tandem_worker_step_seconds_per_token{instance="prefill-1",role="prefill"}': 0.004,
    'tandem_worker_step_fixed_seconds{instance="decode-0",role="decode"}': 0.02,
    'tandem_worker_step_seconds_per_token{instance="decode-0",role="decode"}': 0.03,
    'tandem_worker_step_seconds{instance="decode-0",role="decode"}': 9.0,  # not a fitted line
    "tandem_requests_total": 3.0,
}


def test_the_workers_lines_become_the_profile():
    lines = fitted_lines(METRICS)
    assert set(lines) == {"prefill-0", "prefill-1", "decode-0"}
    assert lines["decode-0"] == {"role": "decode", "fixed_s": 0.02, "per_token_s": 0.03}
    p = calibrated_profile(sized_profile(load_profile("cpu-smollm2"), ARGS), lines, ARGS)
    assert (p.prefill.fixed_s, p.prefill.per_token_s) == pytest.approx((0.06, 0.003))  # the two workers' mean
    assert (p.decode.base_s, p.decode.per_seq_s) == pytest.approx((0.02, 0.03))
    assert p.prefill.max_batched_tokens == 256
    assert (p.kv.chunk_tokens, p.kv.cache_tokens_per_instance) == (16, 1600)
    assert p.prefill_step_s(100) == pytest.approx(0.06 + 0.3)


def test_a_cluster_without_a_decode_line_is_an_error():
    lines = fitted_lines({k: v for k, v in METRICS.items() if "decode" not in k})
    with pytest.raises(RuntimeError, match="decode worker"):
        calibrated_profile(load_profile("cpu-smollm2"), lines, ARGS)


def test_the_comparison_reads_the_real_and_simulated_summaries():
    profile = sized_profile(load_profile("cpu-smollm2"), ARGS)
    requests = to_trace([BenchRequest(i, 0.0, list(range(100, 180)), 3) for i in range(2)], 16)
    records = SimCluster(profile, ClusterShape(2, 1), "cache_aware").run(requests)
    from sim.summary import summarize

    sim = summarize(records, 5.0, 0.3)
    real = {"summary": {
        "hit_rate": sim["hit_ratio_served"] - 0.05, "hit_rate_local": 0.1, "hit_rate_store": 0.2, "ttft_ms": {"p50": 2000 * sim["ttft_s"]["p50"], "p90": 1.0},
        "tpot_ms": {"p50": 1.0}, "completed": 2, "rejected": 0, "prefill_workers": {},
    }}  # fmt: skip
    c = compare(real, sim)
    assert c["hit_rate"]["abs_diff"] == pytest.approx(0.05)
    assert c["ttft_p50_s"]["rel_diff"] == pytest.approx(-0.5)  # the simulator predicted half the real TTFT
    assert c["hit_rate_by_tier"]["real"] == {"local": 0.1, "store": 0.2}
    assert c["hit_rate_by_tier"]["sim"]["local"] == sim["hit_ratio"]["local"]
    assert verdict(c) == {"hit_rate_within": False, "ttft_p50_within": False}
