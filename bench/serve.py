"""Serving benchmark: replay a Mooncake trace against ``tandem up`` over the OpenAI HTTP API.

Each configuration (default: ``cache_aware`` and ``round_robin`` with 2 prefill + 1 decode workers,
and 3 colocated workers under ``cache_aware``: three engine processes each) gets a fresh cluster,
started as a child process (``python -m cluster.cli up``) and stopped by PID afterwards. The same
requests are replayed open-loop against each: sent at their (compressed) trace arrival times, at
most ``--max-concurrency`` in flight, as streamed ``/v1/completions`` with token-id prompts and
``ignore_eos`` so that every request generates exactly its ``max_tokens``.

Trace → requests. Every 512-token block id becomes a fixed pseudo-random run of ``--block-tokens``
token ids seeded by the id, so requests that share leading ids share a prompt prefix. Prompts keep
``input_length`` scaled by the same factor (at most ``--max-prompt-blocks`` blocks); outputs are
``output_length / --output-scale`` capped at ``--max-output-tokens``; arrival times are divided by
``--time-scale``. Selection: ``window`` takes ``--num-requests`` consecutive requests from
``--start``; ``conversations`` (default) takes every request of the first ``--num-conversations``
multi-turn conversations (requests sharing a first non-system block) among the first ``--scan``
requests. A short window of the trace has almost no reuse (the first 100 conversation-trace
requests share only the system-prompt block), so the default keeps whole conversations.

Why so small (8 tokens a block, prompts <= 256 tokens, 4 in flight): on a 2-core CPU shared by
three engine processes, one engine step of a few hundred prompt tokens takes seconds; the default
keeps a whole run near five minutes. Raise the scale on a bigger machine.

Metrics follow vLLM's serving benchmark: TTFT from sending to the first streamed text; ITL the gaps
between streamed chunks; TPOT = (E2E - TTFT) / (output tokens - 1); E2E from sending to the last
chunk. Goodput counts requests with TTFT <= ``--ttft-slo-s`` and TPOT <= ``--tbt-slo-s``. Hit rate:
cached / prompt tokens from each response's usage, split by tier (local pages / store) from the
router's ``/metrics``.

    python -m bench.serve --help
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

from openai import APIStatusError, AsyncOpenAI
from tqdm import tqdm

from bench.cluster_proc import Cluster, ClusterSpec, default_model_dir, scrape  # noqa: E402
from bench.serve_stats import BASELINE, Outcome, summarize, table  # noqa: E402
from bench.trace_workload import (
    FIRST_TOKEN_ID,
    TRACE_BLOCK_TOKENS,
    BenchRequest,
    Scale,
    build_requests,
    ideal_hit_rate,
    select,
)

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results" / "serve.json"
TRACES = ROOT.parent / "shared" / "traces"


CLUSTERS = {
    "cache_aware": ClusterSpec("cache_aware", "disaggregated", "cache_aware", 2, 1),
    "round_robin": ClusterSpec("round_robin", "disaggregated", "round_robin", 2, 1),
    "colocated": ClusterSpec("colocated", "colocated", "cache_aware", 3, 0),
}
# The router's early refusals (no capacity, or an SLO it would break); any other error is a failure.
REJECTION_CODES = {"ttft_slo", "tbt_slo", "no_workers", "no_decode", "cluster_unavailable"}


# ---- replay -----------------------------------------------------------------------------------------


async def send(client: AsyncOpenAI, model: str, req: BenchRequest) -> Outcome:
    out = Outcome(req.index)
    start = time.perf_counter()
    chunk_times = []
    try:
        raw = await client.completions.with_raw_response.create(
            model=model, prompt=req.prompt, max_tokens=req.max_tokens, temperature=0.0, stream=True,
            stream_options={"include_usage": True}, extra_body={"ignore_eos": True},
        )  # fmt: skip
        out.prefill = raw.headers.get("x-tandem-prefill", "")
        out.decode = raw.headers.get("x-tandem-decode", "")
        async for chunk in raw.parse():
            if chunk.choices and chunk.choices[0].text:
                chunk_times.append(time.perf_counter())
            if chunk.usage:
                out.prompt_tokens = chunk.usage.prompt_tokens
                out.output_tokens = chunk.usage.completion_tokens
                details = chunk.usage.prompt_tokens_details
                out.cached_tokens = (details.cached_tokens or 0) if details else 0
    except APIStatusError as e:
        out.status = "rejected" if e.code in REJECTION_CODES else "failed"
        out.error = f"{e.status_code} {e.code}: {e.message}"
        return out
    except Exception as e:  # a broken stream, a timeout: counted and reported, never hidden
        out.error = f"{type(e).__name__}: {e}"
        return out
    end = time.perf_counter()
    if not chunk_times:
        out.error = "the stream carried no text"
        return out
    out.status = "ok"
    out.ttft_s = chunk_times[0] - start
    out.e2e_s = end - start
    out.itls_s = [b - a for a, b in zip(chunk_times, chunk_times[1:])]
    if out.output_tokens != req.max_tokens:
        out.error = f"generated {out.output_tokens} tokens, asked for {req.max_tokens}"
    return out


async def replay(
    url: str, requests: list[BenchRequest], max_concurrency: int, desc: str
) -> tuple[list[Outcome], float, dict[str, float], dict[str, float]]:
    """Warm up, then replay ``requests``; returns outcomes, duration and ``/metrics`` around it."""
    client = AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=600.0)
    model = (await client.models.list()).data[0].id
    # Warm-up: one short request per engine process, outside the measurement.
    warm = [BenchRequest(-1, 0.0, [FIRST_TOKEN_ID + i] * 24, 2) for i in range(3)]
    await asyncio.gather(*(send(client, model, w) for w in warm))

    before = scrape(url)
    limit = asyncio.Semaphore(max_concurrency)
    bar = tqdm(total=len(requests), desc=desc, unit="req")

    async def one(req: BenchRequest, t0: float) -> Outcome:
        await asyncio.sleep(max(0.0, t0 + req.arrival_s - time.perf_counter()))
        async with limit:
            queued_s = time.perf_counter() - (t0 + req.arrival_s)
            outcome = await send(client, model, req)
        outcome.queued_s = queued_s
        bar.update(1)
        return outcome

    t0 = time.perf_counter()
    outcomes = await asyncio.gather(*(one(r, t0) for r in requests))
    duration = time.perf_counter() - t0
    bar.close()
    await client.close()
    return list(outcomes), duration, before, scrape(url)


def run_config(
    spec: ClusterSpec, args: argparse.Namespace, requests: list[BenchRequest], log_dir: Path
) -> dict:
    cluster = Cluster(spec, args.model, args.num_pages, log_dir / f"{spec.name}.log")
    try:
        cluster.wait_healthy(args.startup_timeout_s)
        outcomes, duration, before, after = asyncio.run(
            replay(cluster.url, requests, args.max_concurrency, spec.name)
        )
    finally:
        cluster.stop()
    summary = summarize(outcomes, duration, before, after, args.ttft_slo_s, args.tbt_slo_s)
    return {"cluster": asdict(spec), "summary": summary, "requests": [asdict(o) for o in outcomes]}


def add_workload_flags(ap: argparse.ArgumentParser) -> None:
    """The flags that pick the trace's requests, scale them, and size the cluster replaying them."""
    ap.add_argument("--trace", default=str(TRACES / "conversation_trace.jsonl"))
    ap.add_argument("--select", choices=["conversations", "window"], default="conversations")
    ap.add_argument("--num-conversations", type=int, default=10, help="conversations (default 10)")
    ap.add_argument("--scan", type=int, default=3000, help="trace requests searched for conversations")
    ap.add_argument(
        "--skip-conversations", type=int, default=0, help="conversations: skip the first N found (default 0)"
    )
    ap.add_argument("--start", type=int, default=0, help="window: first request (default 0)")
    ap.add_argument("--num-requests", type=int, default=30, help="window: requests (default 30)")
    ap.add_argument(
        "--block-tokens", type=int, default=8, help="tokens per 512-token trace block (default 8)"
    )
    ap.add_argument("--max-prompt-blocks", type=int, default=32, help="prompt cap in blocks (default 32)")
    ap.add_argument("--output-scale", type=float, default=8.0, help="output lengths divided by (default 8)")
    ap.add_argument("--max-output-tokens", type=int, default=64, help="output cap (default 64)")
    ap.add_argument("--time-scale", type=float, default=16.0, help="arrival times divided by (default 16)")
    ap.add_argument("--max-concurrency", type=int, default=4, help="requests in flight at most (default 4)")
    ap.add_argument("--ttft-slo-s", type=float, default=5.0, help="goodput TTFT SLO (default 5)")
    ap.add_argument("--tbt-slo-s", type=float, default=0.3, help="goodput TPOT SLO (default 0.3)")
    ap.add_argument(
        "--model", help="HF model directory (default: SmolLM2-135M-Instruct via `tandem convert`)"
    )
    ap.add_argument("--num-pages", type=int, default=1024, help="KV pages per worker (default 1024)")
    ap.add_argument("--startup-timeout-s", type=float, default=300.0)
    ap.add_argument("--seed", type=int, default=0)


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_workload_flags(ap)
    ap.add_argument("--configs", nargs="+", choices=list(CLUSTERS), default=list(CLUSTERS))
    ap.add_argument("--out", default=str(RESULTS))
    return ap.parse_args(argv)


def load_requests(args: argparse.Namespace) -> tuple[Scale, list[BenchRequest]]:
    """The scale the flags ask for and the trace's selected requests, turned into token-id prompts."""
    vocab_size = json.loads((Path(args.model) / "config.json").read_text())["vocab_size"]
    rows = [json.loads(line) for line in Path(args.trace).read_text().splitlines() if line.strip()]
    scale = Scale(
        args.block_tokens, args.output_scale, args.max_output_tokens, args.max_prompt_blocks, args.time_scale
    )
    return scale, build_requests(select(rows, args), scale, vocab_size, args.seed)


def describe_workload(args: argparse.Namespace, requests: list[BenchRequest]) -> dict:
    return {
        "trace": Path(args.trace).name,
        "select": args.select,
        **({"start": args.start} if args.select == "window" else {"num_conversations": args.num_conversations, "scan": args.scan}),
        "trace_lines": [r.index for r in requests],
        "num_requests": len(requests),
        "prompt_tokens": sum(len(r.prompt) for r in requests),
        "output_tokens": sum(r.max_tokens for r in requests),
        "span_s": requests[-1].arrival_s,
        "ideal_hit_rate": ideal_hit_rate(requests),
    }  # fmt: skip


def run_configs(args: argparse.Namespace, requests: list[BenchRequest]) -> dict[str, dict]:
    """Each ``--configs`` cluster in turn, on a fresh cluster; its logs go to a new temporary folder."""
    log_dir = Path(tempfile.mkdtemp(prefix="tandem-bench-serve-"))
    print(f"cluster logs in {log_dir}")
    runs = {}
    for name in args.configs:
        runs[name] = run_config(CLUSTERS[name], args, requests, log_dir)
        s = runs[name]["summary"]
        print(
            f"{name}: {s['completed']}/{s['num_requests']} ok in {s['duration_s']:.1f}s; errors {s['errors']}"
        )
    return runs


def build_result(args: argparse.Namespace, scale: Scale, workload: dict, runs: dict[str, dict]) -> dict:
    return {
        "model": Path(args.model).name,
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()},
        "scale": {
            **asdict(scale),
            "token_scale": scale.token_scale,
            "trace_block_tokens": TRACE_BLOCK_TOKENS,
        },
        "slo": {"ttft_s": args.ttft_slo_s, "tbt_s": args.tbt_slo_s, "tbt_measured_as": "TPOT"},
        "max_concurrency": args.max_concurrency,
        "num_pages": args.num_pages,
        "workload": workload,
        "baseline": BASELINE,
        "runs": runs,
    }


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    args.model = args.model or default_model_dir()
    scale, requests = load_requests(args)
    workload = describe_workload(args, requests)
    print(
        f"model {args.model}\nworkload {json.dumps({k: v for k, v in workload.items() if k != 'trace_lines'})}"
    )
    runs = run_configs(args, requests)
    print(table({n: r["summary"] for n, r in runs.items()}))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(build_result(args, scale, workload, runs), indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
