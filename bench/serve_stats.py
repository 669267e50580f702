"""Per-request outcomes of a serving benchmark and their summary (vLLM's metric definitions)."""

from __future__ import annotations

import collections
from dataclasses import dataclass, field

import numpy as np

BASELINE = "round_robin"


@dataclass
class Outcome:
    index: int
    status: str = "failed"  # ok, rejected (REJECTION_CODES), failed
    error: str = ""
    prompt_tokens: int = 0
    output_tokens: int = 0
    cached_tokens: int = 0
    ttft_s: float = 0.0
    e2e_s: float = 0.0
    itls_s: list[float] = field(default_factory=list)
    prefill: str = ""
    decode: str = ""
    queued_s: float = 0.0  # from the scheduled arrival to sending (the concurrency limit's queue)


def percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"mean": None, "p50": None, "p90": None, "p99": None}
    a = np.asarray(values) * 1e3
    return {"mean": float(a.mean()), **{f"p{q}": float(np.percentile(a, q)) for q in (50, 90, 99)}}


def tier_hit_rates(before: dict, after: dict) -> dict[str, float]:
    """Cached / prompt tokens by tier (local pages, store) from the router's ``/metrics`` counters,
    scraped ``before`` and ``after`` the run."""

    def delta(key: str) -> float:
        return after.get(key, 0.0) - before.get(key, 0.0)

    metric_prompt = delta("tandem_prompt_tokens_total")
    local, store = (
        delta('tandem_cached_tokens_total{tier="local"}'),
        delta('tandem_cached_tokens_total{tier="store"}'),
    )
    return {
        "hit_rate_local": local / max(1.0, metric_prompt),
        "hit_rate_store": store / max(1.0, metric_prompt),
    }


def summarize(
    outcomes: list[Outcome], duration_s: float, before: dict, after: dict, ttft_slo_s: float, tbt_slo_s: float
) -> dict:
    ok = [o for o in outcomes if o.status == "ok"]
    tpots = [(o.e2e_s - o.ttft_s) / (o.output_tokens - 1) for o in ok if o.output_tokens > 1]
    good = [o for o in ok if o.ttft_s <= ttft_slo_s and (o.output_tokens <= 1 or (o.e2e_s - o.ttft_s) / (o.output_tokens - 1) <= tbt_slo_s)]  # fmt: skip
    prompt = sum(o.prompt_tokens for o in ok)
    return {
        "num_requests": len(outcomes),
        "completed": len(ok),
        "rejected": sum(o.status == "rejected" for o in outcomes),
        "failed": sum(o.status == "failed" for o in outcomes),
        "wrong_length": sum(o.status == "ok" and bool(o.error) for o in outcomes),
        "errors": sorted({o.error for o in outcomes if o.error})[:10],
        "duration_s": duration_s,
        "request_throughput": len(ok) / duration_s,
        "output_throughput": sum(o.output_tokens for o in ok) / duration_s,
        "goodput": len(good) / duration_s,
        "goodput_fraction": len(good) / len(outcomes),
        "ttft_ms": percentiles([o.ttft_s for o in ok]),
        "tpot_ms": percentiles(tpots),
        "itl_ms": percentiles([x for o in ok for x in o.itls_s]),
        "e2e_ms": percentiles([o.e2e_s for o in ok]),
        "client_queue_ms": percentiles([o.queued_s for o in outcomes]),
        "hit_rate": sum(o.cached_tokens for o in ok) / max(1, prompt),
        **tier_hit_rates(before, after),
        "prompt_tokens": prompt,
        "cached_tokens": sum(o.cached_tokens for o in ok),
        "prefill_workers": dict(collections.Counter(o.prefill for o in ok)),
        "decode_workers": dict(collections.Counter(o.decode for o in ok)),
    }


ROWS = [  # (label, getter, higher is better)
    ("completed", lambda s: s["completed"], True),
    ("req/s", lambda s: s["request_throughput"], True),
    ("output tok/s", lambda s: s["output_throughput"], True),
    ("goodput req/s", lambda s: s["goodput"], True),
    *[(f"{m.upper()} {q} ms", lambda s, m=m, q=q: s[f"{m}_ms"][q], False)
      for m in ("ttft", "tpot", "itl", "e2e") for q in ("p50", "p90", "p99")],
    ("client queue p90", lambda s: s["client_queue_ms"]["p90"], False),
    ("hit rate", lambda s: s["hit_rate"], True),
    ("  local", lambda s: s["hit_rate_local"], True),
    ("  store", lambda s: s["hit_rate_store"], True),
]  # fmt: skip


def table(summaries: dict[str, dict]) -> str:
    names = list(summaries)
    base = summaries.get(BASELINE)
    header = f"{'metric':<16}" + "".join(f"{n:>14}" for n in names)
    if base:
        header += "".join(f"{n + '/rr':>16}" for n in names if n != BASELINE)
    lines = [header, "-" * len(header)]
    for label, get, _ in ROWS:
        vals = [get(summaries[n]) for n in names]
        line = f"{label:<16}" + "".join(f"{'-' if v is None else format(v, '.3g'):>14}" for v in vals)
        if base:
            b = get(base)
            for n, v in zip(names, vals):
                if n != BASELINE:
                    ratio = "-" if v is None or not b else f"{v / b:.2f}x"
                    line += f"{ratio:>16}"
        lines.append(line)
    return "\n".join(lines)
