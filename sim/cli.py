"""``tandem simulate``: replay a trace on a simulated cluster under one routing policy or all.

    tandem simulate --trace conversation_trace.jsonl --prefill 8 --decode 8 --policy all \\
        --json sim.json --plot plots/

Each policy runs on the same requests; the report prints one row per policy (hit ratio by tier
against the cache ceilings, TTFT and TPOT, SLO attainment, rejections) and, with ``--json``,
writes everything. ``--capacity`` adds each policy's effective capacity (a sweep of the arrival
rate: several simulations per policy).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from router.conductor import POLICIES
from router.conductor.profile import load_profile, profile_names
from sim.cluster import ClusterShape
from sim.run import capacity, report, simulate, with_capacities
from sim.trace import read_mooncake

DEFAULT_PROFILE = "gpu-llama3-8b-h100"
DEFAULT_TRACE = Path(__file__).resolve().parents[1].parent / "shared" / "traces" / "conversation_trace.jsonl"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tandem simulate", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--trace", default=str(DEFAULT_TRACE), help="Mooncake JSONL trace (default: %(default)s)")
    p.add_argument(
        "--profile",
        default=DEFAULT_PROFILE,
        help=f"cost profile: {', '.join(profile_names())} or a file (default %(default)s)",
    )
    p.add_argument("--prefill", type=int, default=8, help="prefill instances (default 8)")
    p.add_argument("--decode", type=int, default=8, help="decode instances (default 8)")
    p.add_argument(
        "--colocated", action="store_true", help="prefill + decode colocated instances instead (no store)"
    )
    p.add_argument(
        "--no-store",
        action="store_true",
        help="no store nodes: each prefill instance reuses its own cache only",
    )
    p.add_argument(
        "--local-only",
        action="store_true",
        help="store nodes, but each prefill instance reads its own node only (FAST'25's local cache-aware)",
    )
    p.add_argument("--policy", default="all", help=f"one of {', '.join(POLICIES)}, or all (default)")
    p.add_argument(
        "--speed", type=float, default=1.0, help="arrival-rate scale: 2 = arrivals twice as fast (default 1)"
    )
    p.add_argument("--limit", type=int, default=None, help="the trace's first N requests only")
    for flag, what in (
        ("--cache-tokens-per-instance", "instance cache"),
        ("--store-tokens", "tokens per store node"),
    ):
        p.add_argument(flag, type=int, default=None, help=f"override the profile's {what}")
    p.add_argument(
        "--capacity", action="store_true", help="also find each policy's effective capacity (slow)"
    )
    p.add_argument("--json", default=None, help="write the report here")
    p.add_argument("--plot", default=None, help="write PNG plots into this directory")
    return p  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    policies = list(POLICIES) if args.policy == "all" else [args.policy]
    unknown = [p for p in policies if p not in POLICIES]
    if unknown:
        raise SystemExit(f"tandem simulate: unknown policy {unknown[0]!r}; known: {', '.join(POLICIES)}, all")
    try:
        profile = with_capacities(
            load_profile(args.profile), args.cache_tokens_per_instance, args.store_tokens
        )
        requests = read_mooncake(
            args.trace, speed=args.speed, limit=args.limit, block_tokens=profile.kv.chunk_tokens
        )
    except (OSError, ValueError) as e:
        raise SystemExit(f"tandem simulate: {e}") from None
    shape = ClusterShape(
        args.prefill,
        args.decode,
        colocated=args.colocated,
        store=not args.no_store,
        remote_fetch=not args.local_only,
    )
    result = {"trace": Path(args.trace).name, "speed": args.speed, **report(profile, shape, requests)}
    for policy in policies:
        result["policies"][policy] = _run_policy(profile, shape, policy, requests, args.capacity)
    print(format_table(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
        print(f"wrote {args.json}")
    if args.plot:
        from sim.plots import plot_report

        for path in plot_report(result, args.plot):
            print(f"wrote {path}")
    return 0


def _run_policy(profile, shape: ClusterShape, policy: str, requests, with_capacity: bool) -> dict:
    from tqdm import tqdm

    with tqdm(total=len(requests), desc=policy, unit="req", file=sys.stderr, leave=False) as bar:
        summary = simulate(profile, shape, policy, requests, bar.update)
    if with_capacity:
        summary["capacity"] = capacity(profile, shape, policy, requests)
    return summary


def format_table(result: dict) -> str:
    c = result["ceilings"]
    lines = [
        f"{result['requests']} requests of {result['trace']} (speed x{result['speed']:g}) on {result['profile']}, "
        f"{_shape(result['shape'])}; hit-ratio ceilings: infinite cache {c['infinite']:.3f}, "
        f"oracle LRU of the same capacity {c['oracle_lru']:.3f}; SLO attainment ceiling (requests no "
        f"placement serves in time) {result['intrinsic_misses']['attainment_ceiling']:.3f}",
        f"{'policy':<14}{'done':>7}{'rejected':>9}{'hit (local+store)':>22}{'TTFT mean/p50/p99 s':>24}{'TPOT p50/p99 ms':>18}{'SLO met':>9}{'capacity':>10}",
    ]  # fmt: skip
    for name, r in result["policies"].items():
        h, t, tp = r["hit_ratio"], r["ttft_s"], r["tpot_s"]
        cap = f"x{r['capacity']['effective_scale']:.2f}" if "capacity" in r else "-"
        lines.append(
            f"{name:<14}{r['completed']:>7}{sum(r['rejected'].values()):>9}"
            f"{h['total']:>9.3f} ({h['local']:.3f}+{h['store']:.3f})"
            f"{t['mean']:>10.2f}/{t['p50']:.2f}/{t['p99']:.2f}{tp['p50'] * 1000:>11.0f}/{tp['p99'] * 1000:.0f}"
            f"{r['slo_attainment']:>9.3f}{cap:>10}"
        )  # fmt: skip
    return "\n".join(lines)


def _shape(shape: dict) -> str:
    if shape["colocated"]:
        return f"{shape['num_prefill'] + shape['num_decode']} colocated instances"
    if not shape["store"]:
        store = "no store"
    else:
        store = "store" if shape["remote_fetch"] else "store, own node only"
    return f"{shape['num_prefill']}P+{shape['num_decode']}D, {store}"


if __name__ == "__main__":
    sys.exit(main())
