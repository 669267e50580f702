"""int8 KV on the wire and in the store (``--kv-dtype int8``) against float32 KV: what it saves and
what it changes, on the default model.

The prefill → decode split is run in one process, as the workers run it: a prefill-only engine
exports each prompt's KV (float32, or int8 with a scale per head vector), a second engine takes it
over and decodes greedily. The float32 split equals the offline engine token for token (the e2e
tests check it); the int8 split attends over dequantized prompt KV. Reported:

- bytes of one token's KV either way, and their ratio;
- encode and decode speed (GiB/s of float32 KV) of a hand-off message's KV (4 layers of a
  1,024-token prompt);
- agreement with the float32 split over ``--max-tokens`` greedy tokens per prompt (chat questions
  and long documents): exact matches, mean common prefix, and the mean |log-prob delta| of the
  tokens both chose up to where they part (the decode step's own judgement of the same token).

    python -m bench.kv_quant
    python -m bench.kv_quant --max-tokens 32 --doc-words 400
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from tqdm import tqdm

from bench.cluster_proc import default_model_dir
from bench.engine import QUANT_QUESTIONS
from bench.handoff import prompt as document
from engine import LLM, SamplingParams
from engine.kv_codec import bytes_per_token, decode, encode
from worker.base import DEFAULT_HANDOFF_LAYERS

RESULTS = Path(__file__).resolve().parent / "results" / "kv_quant.json"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    ap.add_argument("--max-tokens", type=int, default=64, help="greedy tokens per prompt (64)")
    ap.add_argument("--docs", type=int, default=4, help="long document prompts besides the questions (4)")
    ap.add_argument("--doc-words", type=int, default=800, help="words per document prompt (800, ~1k tokens)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    return ap.parse_args(argv)


def prompts(llm: LLM, docs: int, words: int) -> list[list[int]]:
    chat = [[{"role": "user", "content": q}] for q in QUANT_QUESTIONS]
    for i in range(docs):  # bench.handoff's long prompts
        text = document(i, words)
        chat.append([{"role": "user", "content": f"{text}\n\nSummarize the text above in two sentences."}])
    assert llm.tokenizer is not None
    return [llm.tokenizer.apply_chat_template(c) for c in chat]


def split(model_dir: str, prompts: list[list[int]], kv_dtype: str, max_tokens: int, bar: tqdm) -> list:
    """Greedy outputs (token ids, each token's log-prob) of the split with KV sent as ``kv_dtype``."""
    params = SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True, logprobs=0)
    prefill = LLM(model_dir, num_pages=512, kv_dtype=kv_dtype)
    decoder = LLM(model_dir, num_pages=512, kv_dtype=kv_dtype)
    seqs = []
    for i, prompt in enumerate(prompts):
        seq = prefill.engine.add_request(prompt, params, request_id=f"p{i}", prefill_only=True)
        while prefill.engine.has_unfinished():
            prefill.engine.step()
        kv = prefill.engine.export_kv(seq)
        prefill.engine.release(seq)
        seqs.append(decoder.engine.add_prefilled(prompt, seq.token_ids[-1], params, kv, f"d{i}"))
        while decoder.engine.has_unfinished():
            decoder.engine.step()
        bar.update()
    # the first token is the prefill's (the same either way): the decode's log-probs are the rest's
    return [
        (d.token_ids[len(p) :], [None] + [lp.logprob for lp in d.logprobs]) for p, d in zip(prompts, seqs)
    ]


def agreement(ref: list, got: list) -> dict:
    prefixes, deltas = [], []
    for (ref_ids, ref_lp), (ids, lp) in zip(ref, got):
        common = next((i for i, (a, b) in enumerate(zip(ids, ref_ids)) if a != b), len(ref_ids))
        prefixes.append(common)
        deltas += [abs(a - b) for a, b in zip(lp[1:common], ref_lp[1:common])]
    return {
        "greedy_exact_matches": sum(p == len(r[0]) for p, r in zip(prefixes, ref)),
        "prompts": len(ref),
        "greedy_mean_common_prefix": statistics.fmean(prefixes),
        "common_prefixes": prefixes,
        "mean_abs_logprob_delta": statistics.fmean(deltas) if deltas else None,
    }


def codec_speed(llm: LLM, tokens: int, layers: int = DEFAULT_HANDOFF_LAYERS, rounds: int = 20) -> dict:
    """GiB/s of float32 KV through encode and decode, for ``layers`` layers (a hand-off message) of a
    ``tokens``-token prompt's KV."""
    cfg = llm.engine.model_cfg
    ps = llm.config.page_size
    kv = torch.randn(layers, 2, cfg.num_kv_heads, -(-tokens // ps), ps, cfg.head_dim)
    enc = encode(kv, "int8")
    timings = {}
    for name, fn in (("encode", lambda: encode(kv, "int8")), ("decode", lambda: decode(enc, torch.float32))):
        fn()
        times = []
        for _ in range(rounds):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        timings[f"{name}_gib_s"] = kv.numel() * 4 / statistics.median(times) / (1 << 30)
    return {"tokens": tokens, "layers": layers, "float32_mib": kv.numel() * 4 / (1 << 20), **timings}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    model_dir = default_model_dir()
    probe = LLM(model_dir, num_pages=8)
    cfg = probe.engine.model_cfg
    sizes = {d: bytes_per_token(cfg, torch.float32, d) for d in ("auto", "int8")}
    speed = codec_speed(probe, 1024)
    work = prompts(probe, args.docs, args.doc_words)
    del probe
    with tqdm(total=2 * len(work), desc="kv_quant", unit="prompt") as bar:
        ref = split(model_dir, work, "auto", args.max_tokens, bar)
        got = split(model_dir, work, "int8", args.max_tokens, bar)
    agree = agreement(ref, got)
    result = {
        "model": Path(model_dir).name,
        "config": {k: v for k, v in vars(args).items() if k != "out"},
        "prompt_tokens": [len(p) for p in work],
        "bytes_per_token": {"float32": sizes["auto"], "int8": sizes["int8"]},
        "bytes_ratio": sizes["auto"] / sizes["int8"],
        "codec": speed,
        "agreement_vs_float32_kv": agree,
    }
    print(
        f"KV per token: float32 {sizes['auto']} B, int8 {sizes['int8']} B ({result['bytes_ratio']:.2f}x fewer)"
    )
    print(f"codec, {speed['layers']} layers of a {speed['tokens']}-token prompt ({speed['float32_mib']:.0f} MiB "
          "float32): encode "
          f"{speed['encode_gib_s']:.2f} GiB/s, decode {speed['decode_gib_s']:.2f} GiB/s")  # fmt: skip
    print(f"greedy vs float32 KV ({args.max_tokens} tokens): {agree['greedy_exact_matches']}/{agree['prompts']} "
          f"equal, mean common prefix {agree['greedy_mean_common_prefix']:.1f}, mean |dlogp| on it "
          f"{agree['mean_abs_logprob_delta']:.4f}")  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
