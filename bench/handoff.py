"""Layer-wise hand-off: how much of the prefill → decode KV transfer hides behind prefill compute.

For each ``--handoff-layers`` value (0: the prompt's KV goes whole after the forward; N: N layers
at a time, each group as soon as the last forward has computed it), ``tandem up`` runs 1 prefill +
1 decode worker and serves ``--requests`` long prompts one at a time (each new, so nothing is
cached), streamed from ``/v1/completions`` with the official ``openai`` client. Per request:

- TTFT: request sent → first token (the prefill worker's);
- first gap: first token → second token, the decode worker's first step, which waits for the
  hand-off; the hand-off's cost is the first gap minus a steady decode step (the median gap
  between the later tokens).

Printed and written to ``--out``: medians per setting, and for each layer-wise setting the share
of the whole hand-off's cost it hides (1 - its cost / the whole one's), measured in the same run.
``--kv-dtype auto int8`` runs every setting with float32 KV on the wire and again with int8
(``tandem up --kv-dtype int8``, about a quarter of the bytes), and prints the two side by side.

    python -m bench.handoff                       # 0 (whole), 4 and 1 layers a message
    python -m bench.handoff --prompt-words 1500 --requests 8
    python -m bench.handoff --kv-dtype auto int8
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import time
from pathlib import Path

from bench.cluster_proc import Cluster, ClusterSpec, default_model_dir
from bench.profile_fit import write_profile

RESULTS = Path(__file__).resolve().parent / "results" / "handoff.json"
WORDS = [
    "the",
    "of",
    "a",
    "in",
    "river",
    "stone",
    "light",
    "paper",
    "green",
    "market",
    "winter",
    "quiet",
    "engine",
    "window",
    "music",
    "number",
]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench.handoff", description=__doc__.split("\n\n")[0])
    ap.add_argument("--handoff-layers", type=int, nargs="+", default=[0, 4, 1], help="settings (0 first)")
    ap.add_argument("--requests", type=int, default=6, help="long prompts per setting (6)")
    ap.add_argument("--prompt-words", type=int, default=1200, help="words per prompt (1200, ~1.3k tokens)")
    ap.add_argument("--max-tokens", type=int, default=8, help="tokens per answer (8)")
    ap.add_argument(
        "--kv-dtype", nargs="+", default=["auto"], choices=["auto", "int8"],
        help="KV on the wire (`tandem up --kv-dtype`): each is run with every --handoff-layers (auto)",
    )  # fmt: skip
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    if args.handoff_layers[0] != 0:
        ap.error("the first --handoff-layers must be 0: the whole hand-off is the baseline")
    return args


def prompt(i: int, words: int) -> str:
    rng = random.Random(i)
    return f"Request {i}. " + " ".join(rng.choice(WORDS) for _ in range(words))


def one_request(client, model: str, text: str, max_tokens: int) -> dict:
    sent = time.perf_counter()
    stream = client.completions.create(
        model=model, prompt=text, max_tokens=max_tokens, temperature=0.0, stream=True,
        stream_options={"include_usage": True}, extra_body={"ignore_eos": True},
    )  # fmt: skip
    arrivals, prompt_tokens = [], None
    for chunk in stream:
        if chunk.choices and chunk.choices[0].text:
            arrivals.append(time.perf_counter())
        if chunk.usage is not None:
            prompt_tokens = chunk.usage.prompt_tokens
    if len(arrivals) < 3:
        raise RuntimeError(f"expected {max_tokens} streamed tokens, got {len(arrivals)}")
    gaps = [b - a for a, b in zip(arrivals, arrivals[1:])]
    steady = statistics.median(gaps[1:])
    return {"prompt_tokens": prompt_tokens, "ttft_s": arrivals[0] - sent, "first_gap_s": gaps[0],
            "steady_step_s": steady, "handoff_s": gaps[0] - steady}  # fmt: skip


def measure(
    layers: int, kv_dtype: str, args: argparse.Namespace, model_dir: str, scratch: Path, offset: int
) -> dict:
    import openai

    flags = ("--handoff-layers", str(layers), "--kv-dtype", kv_dtype)
    spec = ClusterSpec(f"handoff-{kv_dtype}-{layers}", "disaggregated", "round_robin", 1, 1, flags)
    cluster = Cluster(spec, model_dir, 1024, scratch / f"{spec.name}.log")
    try:
        cluster.wait_healthy(600)
        client = openai.OpenAI(base_url=f"{cluster.url}/v1", api_key="unused")
        model = client.models.list().data[0].id
        one_request(client, model, prompt(offset - 1, 50), args.max_tokens)  # warm-up
        rows = [one_request(client, model, prompt(offset + i, args.prompt_words), args.max_tokens)
                for i in range(args.requests)]  # fmt: skip
    finally:
        cluster.stop()
    summary = {
        k: statistics.median(r[k] for r in rows)
        for k in ("ttft_s", "first_gap_s", "steady_step_s", "handoff_s")
    }
    print(f"kv {kv_dtype}, handoff-layers {layers}: TTFT {summary['ttft_s'] * 1e3:.0f} ms, first gap "
          f"{summary['first_gap_s'] * 1e3:.1f} ms, steady step {summary['steady_step_s'] * 1e3:.1f} ms, "
          f"hand-off {summary['handoff_s'] * 1e3:.1f} ms (median of {len(rows)})")  # fmt: skip
    return {"median": summary, "requests": rows}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    model_dir = default_model_dir()
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="tandem-bench-handoff-") as scratch:
        n = 0
        for kv_dtype in args.kv_dtype:
            rows = results.setdefault(kv_dtype, {})
            for layers in args.handoff_layers:  # new prompts for every setting: no cache hits
                n += 1
                rows[str(layers)] = measure(layers, kv_dtype, args, model_dir, Path(scratch), 1000 * n)
    for kv_dtype, rows in results.items():
        whole = rows["0"]["median"]["handoff_s"]
        for layers, row in rows.items():
            if layers != "0":
                row["hidden_fraction"] = 1 - row["median"]["handoff_s"] / whole if whole > 0 else None
                print(f"kv {kv_dtype}, handoff-layers {layers}: hides {row['hidden_fraction']:.0%} of the "
                      f"whole hand-off's {whole * 1e3:.1f} ms")  # fmt: skip
    if "auto" in results and "int8" in results:
        for layers in args.handoff_layers:
            auto, int8 = (results[d][str(layers)]["median"]["handoff_s"] for d in ("auto", "int8"))
            print(
                f"handoff-layers {layers}: int8 KV hand-off {int8 * 1e3:.1f} ms vs float32 {auto * 1e3:.1f} ms"
            )
    out = {"config": {k: v for k, v in vars(args).items() if k != "out"}, "model": Path(model_dir).name,
           "results": results}  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.out}")
    if args.out == RESULTS:  # the simulator's hand-off line follows the latest measurement
        print(f"refitted {write_profile()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
