"""Does the simulator predict a real cluster? The same scaled trace on ``tandem up`` and in ``sim/``.

1. Calibrate: a real cluster (2 prefill + 1 decode, the first policy) replays a *held-out* workload:
   the conversations that follow the validation set in the trace. At the end, each worker's own
   online fit of its step time (the router's ``/metrics``: ``tandem_worker_step_fixed_seconds`` and
   ``..._seconds_per_token``, the lines the conductor itself prices with) becomes the profile's
   prefill line (the prefill workers' mean) and decode line (a decode step computes one token a
   sequence, so its per-token slope is the per-sequence cost). Everything else comes from
   ``cpu-smollm2`` (fetch and hand-off from ``bench/results/transfer.json``, the SLOs the router
   uses) and from the cluster's flags (pages per worker, store capacity, chunk size).
2. Validate, for each policy (default ``cache_aware``, and ``round_robin``, whose hits come from the
   store, so the fetch path is checked too): a fresh real cluster replays the validation workload
   (``bench.serve``'s default conversations, same scaling), and the simulator runs the same requests
   with the calibrated profile, the same shape, policy, cache sizes, chunk size, report lag and
   client concurrency cap.
3. Compare: token hit rate (absolute difference; acceptance 0.03) and median TTFT (relative
   difference; acceptance 30 %), with the hit rate by tier, p90 TTFT, TPOT, rejections and
   placements for context. The
   simulator is also run with the profile fitted on the validation run itself, and with the
   uncalibrated ``cpu-smollm2`` profile (fitted on two threads and a dedicated machine), to show
   what the calibration buys.

The real cluster's store chunk is ``--chunk-tokens`` (default 16, the page size) so that the unit of
reuse is the same in every tier, as it is in the simulator (one chunk size for instance caches and
store nodes); a chunk's key is the hash of the prompt up to its end, the same chaining the engine uses.

    python -m bench.sim_agreement --help
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import re
import sys
import tempfile
from pathlib import Path

from bench.cluster_proc import Cluster, ClusterSpec, default_model_dir
from bench.profile_fit import KV_BYTES_PER_TOKEN
from bench.serve import add_workload_flags, load_requests, replay
from bench.serve_stats import summarize
from bench.trace_workload import BenchRequest
from router.conductor import POLICIES
from router.conductor.profile import CostProfile, load_profile
from sim.cluster import ClusterShape
from sim.run import simulate
from sim.trace import TraceRequest, cacheable_blocks

RESULTS = Path(__file__).resolve().parent / "results" / "sim_agreement.json"
PAGE_TOKENS = 16  # `tandem up`'s workers' page size
STORE_CAPACITY_BYTES = 1 << 30  # `tandem up`'s default --store-capacity
HIT_RATE_TOLERANCE = 0.03
TTFT_TOLERANCE = 0.30


def to_trace(requests: list[BenchRequest], chunk_tokens: int) -> list[TraceRequest]:
    """Benchmark requests as the simulator's: each cacheable chunk keyed by the prompt up to its end."""
    out = []
    for r in requests:
        n = cacheable_blocks(len(r.prompt), chunk_tokens)
        keys = tuple(hash(tuple(r.prompt[: (i + 1) * chunk_tokens])) for i in range(n))
        out.append(TraceRequest(r.index, r.arrival_s, len(r.prompt), r.max_tokens, keys))
    return out


def fitted_lines(metrics: dict[str, float]) -> dict[str, dict[str, float]]:
    """Each worker's fitted step line from the router's scraped ``/metrics``: {worker: {fixed_s, per_token_s, role}}."""
    lines: dict[str, dict] = {}
    pattern = re.compile(
        r'^tandem_worker_step_(fixed_seconds|seconds_per_token)\{instance="([^"]+)",role="([^"]+)"\}$'
    )
    for key, value in metrics.items():
        m = pattern.match(key)
        if m:
            line = lines.setdefault(m.group(2), {"role": m.group(3)})
            line["fixed_s" if m.group(1) == "fixed_seconds" else "per_token_s"] = value
    return lines


def calibrated_profile(base: CostProfile, lines: dict[str, dict], args: argparse.Namespace) -> CostProfile:
    """``base`` with the workers' fitted step lines and the real cluster's cache sizes and chunk."""

    def mean(role: str, key: str) -> float:
        values = [line[key] for line in lines.values() if line["role"] == role]
        if not values:
            raise RuntimeError(f"no fitted step line from a {role} worker in /metrics")
        return sum(values) / len(values)

    prefill = dataclasses.replace(
        base.prefill, fixed_s=mean("prefill", "fixed_s"), per_token_s=mean("prefill", "per_token_s"),
        per_token_context_s=0.0, max_batched_tokens=args.max_num_batched_tokens,
    )  # fmt: skip
    decode = dataclasses.replace(
        base.decode, base_s=mean("decode", "fixed_s"), per_seq_s=mean("decode", "per_token_s"),
        per_context_token_s=0.0,
    )  # fmt: skip
    return dataclasses.replace(base, name=f"{base.name}-calibrated", prefill=prefill, decode=decode)


def sized_profile(base: CostProfile, args: argparse.Namespace) -> CostProfile:
    """``base`` with the real cluster's caches: pages per worker, store capacity, chunk size."""
    kv = dataclasses.replace(
        base.kv, bytes_per_token=KV_BYTES_PER_TOKEN, chunk_tokens=args.chunk_tokens,
        cache_tokens_per_instance=args.num_pages * PAGE_TOKENS,
        store_tokens_per_node=STORE_CAPACITY_BYTES // KV_BYTES_PER_TOKEN,
    )  # fmt: skip
    return dataclasses.replace(base, kv=kv)


def run_real(
    args: argparse.Namespace, policy: str, requests: list[BenchRequest], name: str, log_dir: Path
) -> dict:
    """A fresh real cluster replays ``requests``; its summary and the workers' fitted step lines."""
    spec = ClusterSpec(name, "disaggregated", policy, 2, 1, ("--chunk-tokens", str(args.chunk_tokens)))
    cluster = Cluster(spec, args.model, args.num_pages, log_dir / f"{name}.log")
    try:
        cluster.wait_healthy(args.startup_timeout_s)
        outcomes, duration, before, after = asyncio.run(
            replay(cluster.url, requests, args.max_concurrency, name)
        )
    finally:
        cluster.stop()
    summary = summarize(outcomes, duration, before, after, args.ttft_slo_s, args.tbt_slo_s)
    return {"summary": summary, "fitted_lines": fitted_lines(after)}


def run_sim(
    profile: CostProfile, args: argparse.Namespace, policy: str, requests: list[TraceRequest]
) -> dict:
    result = simulate(profile, ClusterShape(2, 1), policy, requests, max_in_flight=args.max_concurrency)
    return {"profile": _profile_summary(profile), **result}


def _profile_summary(p: CostProfile) -> dict:
    return {
        "name": p.name,
        "prefill": {"fixed_s": p.prefill.fixed_s, "per_token_s": p.prefill.per_token_s},
        "decode": {"base_s": p.decode.base_s, "per_seq_s": p.decode.per_seq_s},
        "chunk_tokens": p.kv.chunk_tokens,
    }


def compare(real: dict, sim: dict) -> dict:
    """The two acceptance measures, and a few more for context (seconds; TTFT relative to the real one)."""
    r, s = real["summary"], sim
    real_ttft = r["ttft_ms"]["p50"] / 1e3
    return {
        "hit_rate": {"real": r["hit_rate"], "sim": s["hit_ratio_served"], "abs_diff": s["hit_ratio_served"] - r["hit_rate"]},
        "hit_rate_by_tier": {
            "real": {"local": r["hit_rate_local"], "store": r["hit_rate_store"]},
            "sim": {"local": s["hit_ratio"]["local"], "store": s["hit_ratio"]["store"]},
        },
        "ttft_p50_s": {"real": real_ttft, "sim": s["ttft_s"]["p50"], "rel_diff": s["ttft_s"]["p50"] / real_ttft - 1},
        "ttft_p90_s": {"real": r["ttft_ms"]["p90"] / 1e3, "sim": s["ttft_s"]["p90"]},
        "tpot_p50_s": {"real": r["tpot_ms"]["p50"] / 1e3, "sim": s["tpot_s"]["p50"]},
        "completed": {"real": r["completed"], "sim": s["completed"]},
        "rejected": {"real": r["rejected"], "sim": sum(s["rejected"].values())},
        "placements": {"real": r["prefill_workers"], "sim": s["placements"]},
    }  # fmt: skip


def verdict(c: dict) -> dict:
    return {
        "hit_rate_within": abs(c["hit_rate"]["abs_diff"]) <= HIT_RATE_TOLERANCE,
        "ttft_p50_within": abs(c["ttft_p50_s"]["rel_diff"]) <= TTFT_TOLERANCE,
    }


def print_table(comparisons: dict[str, dict]) -> None:
    print(
        f"{'policy, simulated with':<38} {'hit real':>8} {'hit sim':>8} {'diff':>7}   {'TTFT p50 real':>13} {'sim':>7} {'diff':>7}"
    )
    for name, c in comparisons.items():
        h, t = c["hit_rate"], c["ttft_p50_s"]
        print(
            f"{name:<38} {h['real']:>8.3f} {h['sim']:>8.3f} {h['abs_diff']:>+7.3f}   "
            f"{t['real']:>12.2f}s {t['sim']:>6.2f}s {t['rel_diff']:>+7.1%}"
        )  # fmt: skip


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_workload_flags(ap)
    ap.add_argument(
        "--policies",
        nargs="+",
        choices=list(POLICIES),
        default=["cache_aware", "round_robin"],
        help="validated one after the other; the first also calibrates (default cache_aware round_robin)",
    )
    ap.add_argument("--chunk-tokens", type=int, default=PAGE_TOKENS, help="store chunk tokens (default 16)")
    ap.add_argument("--max-num-batched-tokens", type=int, default=512, help="as `tandem up` (default 512)")
    ap.add_argument("--out", default=str(RESULTS))
    args = ap.parse_args(argv)
    args.model = args.model or default_model_dir()
    return args


def validate(args: argparse.Namespace, policy: str, calibration: dict, log_dir: Path) -> dict:
    """One policy: the real replay, and the simulator with each profile; their comparisons."""
    _, requests = load_requests(args)
    real = run_real(args, policy, requests, f"validation-{policy}", log_dir)
    base = sized_profile(load_profile("cpu-smollm2"), args)
    trace = to_trace(requests, args.chunk_tokens)
    sims = {
        "held-out calibration": run_sim(calibrated_profile(base, calibration["fitted_lines"], args), args, policy, trace),
        "same-run calibration": run_sim(calibrated_profile(base, real["fitted_lines"], args), args, policy, trace),
        "cpu-smollm2 as shipped": run_sim(base, args, policy, trace),
    }  # fmt: skip
    comparisons = {name: compare(real, s) for name, s in sims.items()}
    return {
        "num_requests": len(requests),
        "verdict": verdict(comparisons["held-out calibration"]),
        "comparisons": comparisons,
        "real": real,
        "sim": sims,
    }


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    log_dir = Path(tempfile.mkdtemp(prefix="tandem-sim-agreement-"))
    print(f"cluster logs in {log_dir}")
    held_out = argparse.Namespace(
        **{**vars(args), "skip_conversations": args.skip_conversations + args.num_conversations}
    )
    _, calibration_requests = load_requests(held_out)
    calibration = run_real(args, args.policies[0], calibration_requests, "calibration", log_dir)
    policies = {policy: validate(args, policy, calibration, log_dir) for policy in args.policies}
    print_table({f"{p}, {name}": c for p, v in policies.items() for name, c in v["comparisons"].items()})
    result = {
        "workload": {"calibration_requests": len(calibration_requests), "max_concurrency": args.max_concurrency,
                     "chunk_tokens": args.chunk_tokens, "num_pages": args.num_pages, "shape": "2 prefill + 1 decode"},
        "tolerance": {"hit_rate_abs": HIT_RATE_TOLERANCE, "ttft_p50_rel": TTFT_TOLERANCE},
        "verdict": {p: v["verdict"] for p, v in policies.items()},
        "calibration": calibration,
        "policies": policies,
    }  # fmt: skip
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(f"verdict (held-out calibration): {result['verdict']}\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
