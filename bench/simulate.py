"""Simulator benchmark: the conductor's policies at Mooncake scale, and the evidence the README cites.

Runs ``sim`` (the router's real conductor in a simulated cluster, virtual time) on the shared
Mooncake traces with the GPU profile and writes ``bench/results/simulate.json`` plus PNG plots in
``bench/results/sim/``:

1. every policy on each trace (8 prefill + 8 decode instances, store on), with its effective
   capacity: the largest arrival-rate scale at which 90 % of requests meet both SLOs;
2. FAST'25's comparison: global cache-aware (store, fetch from any node), local cache-aware (each
   instance reuses its own node only), load balancing and random (own node only), mean TTFT;
3. disaggregated (8P + 8D) against colocated (16 instances) at the same number of GPUs.

Each simulation of the full conversation trace takes 5-20 s here; the whole run about 15 minutes.

    python -m bench.simulate [--quick]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

from router.conductor import POLICIES
from router.conductor.profile import SloTargets, load_profile
from sim.cli import format_table
from sim.cluster import ClusterShape
from sim.plots import plot_report
from sim.run import capacity, report, simulate
from sim.trace import read_mooncake

TRACES = Path(__file__).resolve().parents[2] / "shared" / "traces"
RESULTS = Path(__file__).resolve().parent / "results"
PROFILE = "gpu-llama3-8b-h100"
DISAGG = ClusterShape(8, 8)


def policies_on(trace: str, requests, profile, with_capacity: tuple[str, ...]) -> dict:
    result = {"trace": trace, "speed": 1.0, **report(profile, DISAGG, requests)}
    for policy in POLICIES:
        result["policies"][policy] = simulate(profile, DISAGG, policy, requests)
        if policy in with_capacity:
            result["policies"][policy]["capacity"] = capacity(profile, DISAGG, policy, requests)
        print(f"  {trace} {policy}: done", flush=True)
    print(format_table(result))
    return result


def fast25_ordering(requests, profile, speed: float) -> dict:
    """Mean TTFT of FAST'25's four schedulers, on our conductor's policies, every request served
    (no SLO to reject by: the comparison is of placement alone, over the same requests)."""
    from sim.trace import rescale

    scaled = rescale(list(requests), speed)
    profile = dataclasses.replace(profile, slo=SloTargets(ttft_s=1e9, tbt_s=1e9))
    local = ClusterShape(8, 8, remote_fetch=False)
    runs = {
        "global cache-aware (cache_aware, fetch from any node)": (DISAGG, "cache_aware"),
        "local cache-aware (cache_aware, own node only)": (local, "cache_aware"),
        "load balancing (least_loaded, own node only)": (local, "least_loaded"),
        "random (own node only)": (local, "random"),
    }
    out = {}
    for name, (shape, policy) in runs.items():
        r = simulate(profile, shape, policy, scaled)
        out[name] = {"ttft_mean_s": r["ttft_s"]["mean"], "hit_ratio": r["hit_ratio"]["total"],
                     "slo_attainment": r["slo_attainment"], "rejected": sum(r["rejected"].values())}  # fmt: skip
        print(f"  speed x{speed:g} {name}: mean TTFT {r['ttft_s']['mean']:.2f}s", flush=True)
    return out


def colocated_vs_disaggregated(requests, profile) -> dict:
    colocated = ClusterShape(8, 8, colocated=True)
    out = {}
    for name, shape in (("disaggregated 8P+8D", DISAGG), ("colocated 16", colocated)):
        out[name] = capacity(profile, shape, "cache_aware", requests)
        print(f"  {name}: capacity x{out[name]['effective_scale']:.2f}", flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.simulate", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    ap.add_argument("--quick", action="store_true", help="the first 3000 requests of each trace only")
    ap.add_argument("--out", type=Path, default=RESULTS / "simulate.json")
    ap.add_argument(
        "--only-fast25",
        action="store_true",
        help="redo only FAST'25's comparison in an existing results file",
    )
    args = ap.parse_args(argv)
    profile = load_profile(PROFILE)
    limit = 3000 if args.quick else None
    started = time.perf_counter()
    results: dict = {"profile": PROFILE, "quick": args.quick, "traces": {}}
    if args.only_fast25:
        results = json.loads(args.out.read_text())
    for trace in ("conversation_trace", "synthetic_trace"):
        requests = read_mooncake(TRACES / f"{trace}.jsonl", limit=limit)
        print(f"{trace}: {len(requests)} requests", flush=True)
        if args.only_fast25:
            entry = results["traces"][trace]
        else:
            entry = policies_on(
                trace, requests, profile, ("cache_aware", "least_loaded", "round_robin", "random")
            )
            entry["colocated_vs_disaggregated"] = colocated_vs_disaggregated(requests, profile)
        entry["fast25"] = {f"x{s:g}": fast25_ordering(requests, profile, s) for s in (1.0, 4.0)}
        results["traces"][trace] = entry
        for path in plot_report(entry, RESULTS / "sim" / trace):
            print(f"wrote {path}")
    _print_ratios(results)
    results["seconds"] = time.perf_counter() - started
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote {args.out} ({results['seconds']:.0f}s)")
    return 0


def _print_ratios(results: dict) -> None:
    for trace, entry in results["traces"].items():
        caps = {n: p["capacity"]["effective_scale"] for n, p in entry["policies"].items() if "capacity" in p}
        base = caps.get("cache_aware", 0.0)
        ratios = ", ".join(f"{base / c:.2f}x {n}" for n, c in caps.items() if n != "cache_aware" and c)
        print(f"{trace}: cache_aware effective capacity x{base:.2f} = {ratios}")
        cd = entry["colocated_vs_disaggregated"]
        print(f"{trace}: disaggregated/colocated capacity = "
              f"{cd['disaggregated 8P+8D']['effective_scale'] / max(1e-9, cd['colocated 16']['effective_scale']):.2f}")  # fmt: skip


if __name__ == "__main__":
    raise SystemExit(main())
