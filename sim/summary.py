"""A simulation's results: hit ratios by tier against the cache ceilings, latency distributions,
SLO attainment, rejections, and how far the conductor's predictions were from what happened."""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Sequence

from sim.caches import LruCache
from sim.records import RequestRecord
from sim.trace import TraceRequest


def percentiles(values: Sequence[float]) -> dict[str, float]:
    if not values:
        return {"mean": 0.0, "p50": 0.0, "p90": 0.0, "p99": 0.0}
    ordered = sorted(values)

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    return {"mean": statistics.fmean(ordered), "p50": at(0.5), "p90": at(0.9), "p99": at(0.99)}


def summarize(records: Sequence[RequestRecord], ttft_slo_s: float, tbt_slo_s: float) -> dict:
    served = [r for r in records if r.first_token_s is not None]
    # over every request's prompt (a rejected one reused nothing), as the ceilings are
    prompt = sum(r.input_tokens for r in records) or 1
    local = sum(r.cached_local_tokens for r in served)
    store = sum(r.cached_store_tokens for r in served)
    finished = [r for r in served if r.finished_s is not None]
    return {
        "requests": len(records),
        "completed": len(finished),
        "rejected": dict(Counter(r.rejected for r in records if r.rejected)),
        "hit_ratio": {"total": (local + store) / prompt, "local": local / prompt, "store": store / prompt},
        "hit_ratio_served": (local + store) / (sum(r.input_tokens for r in served) or 1),
        "ttft_s": percentiles([r.ttft_s for r in served]),
        "tpot_s": percentiles([r.tpot_s for r in finished if r.output_tokens > 1]),
        "decode_step_s": percentiles([r.mean_step_s for r in finished if r.output_tokens > 1]),
        "slo": {"ttft_s": ttft_slo_s, "tbt_s": tbt_slo_s, "tbt_measured_as": "TPOT"},
        "slo_attainment": sum(r.meets(ttft_slo_s, tbt_slo_s) for r in records) / max(1, len(records)),
        "slo_misses": {
            "ttft": sum(r.ttft_s > ttft_slo_s for r in served),
            "tbt": sum(r.tpot_s > tbt_slo_s for r in finished),
            "rejected": len(records) - len(served),
        },
        "prediction_error": prediction_error(served),
        "placements": dict(Counter(r.prefill_id for r in served)),
    }


def prediction_error(served: Sequence[RequestRecord]) -> dict:
    """The conductor's TTFT and cached-token predictions against what the simulated cluster did."""
    ttft = [r.predicted_ttft_s - r.ttft_s for r in served]
    rel = [abs(e) / max(r.ttft_s, 1e-9) for e, r in zip(ttft, served)]
    cached = [
        (r.predicted_local_tokens + r.predicted_store_tokens)
        - (r.cached_local_tokens + r.cached_store_tokens)
        for r in served
    ]
    return {
        "ttft_s_mean_signed": statistics.fmean(ttft) if ttft else 0.0,
        "ttft_relative_abs_p50": percentiles(rel)["p50"],
        "cached_tokens_mean_signed": statistics.fmean(cached) if cached else 0.0,
    }


def ceilings(requests: Sequence[TraceRequest], block_tokens: int, capacity_chunks: int) -> dict:
    """Token hit ratios no placement can beat: an infinite cache that keeps every prefix, and one
    LRU of the cluster's whole capacity that every request reads and writes (the oracle LRU)."""
    prompt = sum(r.input_tokens for r in requests) or 1
    every, oracle_lru = _unbounded_cache(requests), LruCache(capacity_chunks)
    infinite = oracle = 0
    for r in requests:
        infinite += every.prefix_hits(r.keys, touch=False) * block_tokens
        oracle += oracle_lru.prefix_hits(r.keys, touch=False) * block_tokens
        every.insert(r.keys)
        oracle_lru.insert(r.keys)
    return {"infinite": infinite / prompt, "oracle_lru": oracle / prompt, "capacity_chunks": capacity_chunks}


def _unbounded_cache(requests: Sequence[TraceRequest]) -> LruCache:
    """A cache that keeps every chunk these requests name."""
    return LruCache(sum(len(r.keys) for r in requests))


def intrinsic_misses(requests: Sequence[TraceRequest], profile) -> dict:
    """Requests that miss an SLO even alone on an idle cluster with a perfect cache: TTFT = the
    prefill of what no earlier request could have cached (fetched for free); TPOT = the hand-off
    plus one-sequence decode steps, over the tokens after the first. No placement serves these
    within the SLOs, so at most ``1 - fraction`` of requests can meet them at any load: the ceiling
    of every policy's attainment."""
    block = profile.kv.chunk_tokens
    seen = _unbounded_cache(requests)
    ttft = tbt = either = 0
    for r in requests:
        cached = seen.prefix_hits(r.keys, touch=False) * block
        seen.insert(r.keys)
        new = r.input_tokens - cached
        first = profile.prefill_step_s(new, new * (cached + new / 2))
        misses_ttft = first > profile.slo.ttft_s
        misses_tbt = False
        if r.output_tokens > 1:
            m = r.output_tokens - 1  # decode steps of one sequence whose context grows by one each
            steps = (
                m * profile.decode_step_s(1, r.input_tokens)
                + profile.decode.per_context_token_s * m * (m + 1) / 2
            )
            misses_tbt = (profile.handoff_s(r.input_tokens) + steps) / m > profile.slo.tbt_s
        ttft += misses_ttft
        tbt += misses_tbt
        either += misses_ttft or misses_tbt
    n = max(1, len(requests))
    return {"ttft": ttft / n, "tbt": tbt / n, "either": either / n, "attainment_ceiling": 1 - either / n}
