"""Engine benchmark: Tandem's engine against HF transformers on the same requests, in one run.

Three measurements, all float32 on the model given (default SmolLM2-135M-Instruct):

1. end to end: ``--num-requests`` requests (prompts 32-512 tokens, outputs 16-256, seeded), all
   submitted to ``LLM.generate`` at once, against HF ``generate`` batched as a user would
   (``--hf-batch-size`` requests per call, left-padded, each batch run to its longest output).
   Throughput counts only the tokens each request asked for.
2. prefill: long prompts with ``max_tokens=1``; achieved FLOP/s as a fraction of the fp32 GEMM peak.
3. decode: ``--decode-batch`` sequences decoding together; FLOP/s per step against the same peak.
4. quantization (alone with ``--quantization-only``, merged into the results file): batch-1 decode
   (128-token prompt, 128 new tokens, greedy) and prefill for fp32, int8 and int4 weights, and the
   quantized models' accuracy against fp32 on ``QUANT_QUESTIONS``: the fp32 greedy continuation is
   scored under each model (teacher-forced, the engine's prompt logprobs) for the mean |delta
   log-prob| of its tokens and how often each model's own top-1 is that token; and how many
   free-running greedy continuations equal fp32's, and their mean common-prefix length.
5. vLLM (alone with ``--vllm-only``, merged into the results file): with a vLLM CPU venv
   (``--vllm-python``, default ``.peers/vllm/bin/python`` from ``make peer-vllm`` if built) the
   mixed workload, decode at batch 32 and 1, and prefill run on Tandem then on vLLM (same prompts),
   row by row, printing Tandem / vLLM; ``--vllm-quantization`` adds Tandem's batch-1 decode with
   int8/int4 weights against vLLM fp32, and with a llama.cpp venv (``--llama-python``, default
   ``.peers/llama/bin/python`` from ``make peer-llama`` if built) the int4 row against llama.cpp on
   the GGUF the default model ships as. See ``bench/engine_peer.py``.

The GEMM peak is measured first, in this process, with the same thread count. FLOPs count the
matmuls: 2 x (linear weights) per token, attention scores and values over the real context, and the
LM head for the rows that get logits.

    python -m bench.engine --help
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

if not __package__:  # run as `python bench/engine.py`
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

from bench.cluster_proc import default_model_dir  # noqa: E402
from engine import LLM, SamplingParams  # noqa: E402
from engine.config import ModelConfig  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "engine.json"
PEER_ROWS = ("mixed", "decode_b32", "decode_b1", "prefill")  # see bench/engine_peer.py


def gemm_peak_flops(seconds: float = 3.0) -> float:
    """Best fp32 matmul rate over square and model-shaped GEMMs."""
    best = 0.0
    for m, k, n in [(2048, 2048, 2048), (2048, 576, 1536), (4096, 1024, 1024)]:
        a, b = torch.randn(m, k), torch.randn(k, n)
        a @ b
        deadline = time.perf_counter() + seconds / 3
        while time.perf_counter() < deadline:
            t = time.perf_counter()
            a @ b
            best = max(best, 2 * m * k * n / (time.perf_counter() - t))
    return best


class FlopModel:
    def __init__(self, cfg: ModelConfig) -> None:
        h, i = cfg.hidden_size, cfg.intermediate_size
        q, kv = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
        self.linear_per_token = 2 * cfg.num_layers * (h * (q + 2 * kv) + q * h + 3 * h * i)
        self.attn_per_query_key = 4 * cfg.num_layers * q  # QK^T and PV
        self.lm_head_per_row = 2 * h * cfg.vocab_size

    def prefill(self, prompt_len: int) -> float:
        causal_pairs = prompt_len * (prompt_len + 1) / 2
        return (
            prompt_len * self.linear_per_token + causal_pairs * self.attn_per_query_key + self.lm_head_per_row
        )

    def decode_step(self, context_lens: list[int]) -> float:
        n = len(context_lens)
        return (
            n * (self.linear_per_token + self.lm_head_per_row) + sum(context_lens) * self.attn_per_query_key
        )


def make_requests(n: int, vocab: int, seed: int) -> list[tuple[list[int], int]]:
    g = torch.Generator().manual_seed(seed)
    reqs = []
    for _ in range(n):
        plen = int(torch.randint(32, 513, (1,), generator=g))
        olen = int(torch.randint(16, 257, (1,), generator=g))
        reqs.append((torch.randint(100, vocab, (plen,), generator=g).tolist(), olen))
    return reqs


def run_engine(llm: LLM, reqs) -> float:
    params = [SamplingParams(temperature=0.0, max_tokens=o, ignore_eos=True) for _, o in reqs]
    start = time.perf_counter()
    outs = llm.generate([p for p, _ in reqs], params, use_tqdm=True)
    elapsed = time.perf_counter() - start
    assert [len(o.token_ids) for o in outs] == [o for _, o in reqs]
    return elapsed


def run_hf(model_dir: str, reqs, batch_size: int) -> float:
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    pad = model.config.pad_token_id if model.config.pad_token_id is not None else 0
    start = time.perf_counter()
    for i in tqdm(range(0, len(reqs), batch_size), desc="hf generate (batches)"):
        batch = reqs[i : i + batch_size]
        width = max(len(p) for p, _ in batch)
        ids = torch.tensor([[pad] * (width - len(p)) + p for p, _ in batch])
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p, _ in batch])
        with torch.no_grad():
            model.generate(
                ids, attention_mask=mask, max_new_tokens=max(o for _, o in batch), min_new_tokens=max(o for _, o in batch),
                do_sample=False, pad_token_id=pad,
            )  # fmt: skip
    return time.perf_counter() - start


def prefill_prompts(vocab: int, prompt_len: int, n: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(7)
    return [torch.randint(100, vocab, (prompt_len,), generator=g).tolist() for _ in range(n)]


def decode_prompts(vocab: int, batch: int, prompt_len: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(8)
    return [torch.randint(100, vocab, (prompt_len,), generator=g).tolist() for _ in range(batch)]


def measure_prefill(llm: LLM, flops: FlopModel, vocab: int, prompt_len: int, n: int) -> dict:
    prompts = prefill_prompts(vocab, prompt_len, n)
    llm.engine.pool.reset_prefix_cache()
    start = time.perf_counter()
    llm.generate(prompts, SamplingParams(temperature=0.0, max_tokens=1))
    elapsed = time.perf_counter() - start
    llm.engine.pool.reset_prefix_cache()
    return {
        "prompt_len": prompt_len,
        "num_prompts": n,
        "tokens_per_s": n * prompt_len / elapsed,
        "flops_per_s": n * flops.prefill(prompt_len) / elapsed,
    }


def measure_decode(llm: LLM, flops: FlopModel, vocab: int, batch: int, prompt_len: int, steps: int) -> dict:
    engine = llm.engine
    for prompt in decode_prompts(vocab, batch, prompt_len):
        engine.add_request(prompt, SamplingParams(temperature=0.0, max_tokens=steps + 1, ignore_eos=True))
    times, step_flops = [], []
    with tqdm(total=steps, desc=f"decode batch {batch}") as bar:
        while engine.has_unfinished():
            running = list(engine.scheduler.running)
            pure_decode = len(running) == batch and all(s.num_uncomputed_tokens == 1 for s in running)
            lens = [s.num_tokens for s in running]
            t = time.perf_counter()
            engine.step()
            dt = time.perf_counter() - t
            if pure_decode:
                times.append(dt)
                step_flops.append(flops.decode_step(lens))
                bar.update(1)
    step_s = statistics.median(times)
    return {
        "batch": batch,
        "prompt_len": prompt_len,
        "steps": len(times),
        "step_ms_p50": step_s * 1e3,
        "tokens_per_s": batch / step_s,
        "tokens_per_s_mean": batch * len(times) / sum(times),
        "flops_per_s": statistics.median(f / t for f, t in zip(step_flops, times)),
    }


QUANT_QUESTIONS = (
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "def fibonacci(n):",
    "List three primary colors.",
    "Explain what a KV cache is in one sentence.",
    "Translate 'good morning' into Spanish.",
    "What is 12 times 12?",
    "Give two tips for writing clear emails.",
)
QUANT_NEW_TOKENS = 32  # per prompt, for the accuracy figures


def quant_prompts(llm: LLM) -> list[list[int]]:
    return [llm.tokenizer.apply_chat_template([{"role": "user", "content": q}]) for q in QUANT_QUESTIONS]


def greedy(llm: LLM, prompts: list[list[int]]) -> list[list[int]]:
    params = SamplingParams(temperature=0.0, max_tokens=QUANT_NEW_TOKENS, ignore_eos=True)
    return [o.token_ids for o in llm.generate(prompts, params)]


def scored(llm: LLM, prompts: list[list[int]], outputs: list[list[int]]) -> list[tuple[float, int]]:
    """(log-prob, top-1 token id) of each output token given the prompt and the outputs before it."""
    params = SamplingParams(temperature=0.0, max_tokens=1, prompt_logprobs=1)
    outs = llm.generate([p + o for p, o in zip(prompts, outputs)], params)
    rows = []
    for prompt, out in zip(prompts, outs):
        rows += [(lp.logprob, next(iter(lp.top))) for lp in out.prompt_logprobs[len(prompt) :]]
    return rows


def quant_accuracy(llm: LLM, prompts, ref_out, ref_scores) -> dict:
    """How far ``llm`` is from fp32 (``ref_out``: fp32 greedy outputs, ``ref_scores``: their scores)."""
    own = greedy(llm, prompts)
    # one prompt at a time as well as the 8 together: both decode through the small-batch kernels
    # (int8 on float32 activations, int4 on 16-bit integers, a token's result independent of its
    # batch), but the prompts are prefilled apart or together by the packed kernels
    alone = [out for p in prompts for out in greedy(llm, [p])]
    scores = scored(llm, prompts, ref_out)
    ref_tokens = [t for o in ref_out for t in o]

    def common(outs):
        return [
            next((i for i, (a, b) in enumerate(zip(o, r)) if a != b), len(r)) for o, r in zip(outs, ref_out)
        ]

    prefix, prefix_alone = common(own), common(alone)
    return {
        "mean_abs_logprob_delta": statistics.fmean(abs(a[0] - b[0]) for a, b in zip(scores, ref_scores)),
        "teacher_forced_top1_agreement": statistics.fmean(s[1] == t for s, t in zip(scores, ref_tokens)),
        "greedy_exact_matches": sum(p == len(r) for p, r in zip(prefix, ref_out)),
        "greedy_mean_common_prefix": statistics.fmean(prefix),
        "greedy_batch1_exact_matches": sum(p == len(r) for p, r in zip(prefix_alone, ref_out)),
        "greedy_batch1_mean_common_prefix": statistics.fmean(prefix_alone),
    }


def measure_quantization(model_dir: str, flops: FlopModel, vocab: int) -> dict:
    """Batch-1 decode and prefill speed for fp32, int8 and int4 weights, and accuracy against fp32."""
    rows, ref = {}, None
    for method in (None, "int8", "int4"):
        name = method or "fp32"
        llm = LLM(model_dir, dtype="float32", quantization=method, max_num_seqs=8, num_pages=512)
        llm.generate([[100] * 16], SamplingParams(temperature=0.0, max_tokens=2))  # warm-up
        row = {"decode_batch1": measure_decode(llm, flops, vocab, 1, 128, 128)}
        # the small-batch kernels' range (quantized): decode steps of 2, 4 and 8 tokens
        row["decode_small_batches"] = [measure_decode(llm, flops, vocab, b, 128, 32) for b in (2, 4, 8)]
        row["prefill"] = measure_prefill(llm, flops, vocab, 512, 4)
        prompts = quant_prompts(llm)
        if ref is None:
            out = greedy(llm, prompts)
            ref = (out, scored(llm, prompts, out))
        else:
            row["accuracy_vs_fp32"] = quant_accuracy(llm, prompts, *ref)
            row["decode_speedup_vs_fp32"] = (
                row["decode_batch1"]["tokens_per_s"] / rows["fp32"]["decode_batch1"]["tokens_per_s"]
            )
        rows[name] = row
        _print_quant_row(name, row)
        del llm
    return {"threads": torch.get_num_threads(), "questions": list(QUANT_QUESTIONS),
            "new_tokens": QUANT_NEW_TOKENS, "rows": rows}  # fmt: skip


def _print_quant_row(name: str, row: dict) -> None:
    line = f"{name}: batch-1 decode {row['decode_batch1']['tokens_per_s']:.1f} tok/s"
    steps = " / ".join(f"{d['step_ms_p50']:.1f}" for d in row["decode_small_batches"])
    line += f" (steps of 2 / 4 / 8 tokens: {steps} ms)"
    line += f", prefill {row['prefill']['tokens_per_s']:.0f} tok/s"
    if "accuracy_vs_fp32" in row:
        acc = row["accuracy_vs_fp32"]
        line += (
            f" ({row['decode_speedup_vs_fp32']:.2f}x fp32); |dlogp| {acc['mean_abs_logprob_delta']:.4f}, "
            f"top-1 agreement {acc['teacher_forced_top1_agreement']:.1%}, greedy equal "
            f"{acc['greedy_exact_matches']}/{len(QUANT_QUESTIONS)} batched, "
            f"{acc['greedy_batch1_exact_matches']}/{len(QUANT_QUESTIONS)} one at a time"
        )
    print(line)


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--model", help="HF model directory (default: SmolLM2-135M-Instruct via `tandem convert`)"
    )
    ap.add_argument("--num-requests", type=int, default=64)
    ap.add_argument(
        "--hf-batch-size", type=int, default=16, help="requests per HF generate call (default 16)"
    )
    ap.add_argument("--decode-batch", type=int, nargs="+", default=[32, 64])
    ap.add_argument("--prefill-len", type=int, default=512)
    ap.add_argument("--skip-hf", action="store_true", help="skip the transformers baseline")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--quantization-only", action="store_true",
        help="run only the quantization section; its results replace that key of --out, the rest is kept",
    )  # fmt: skip
    ap.add_argument(
        "--vllm-python",
        help="python of a vLLM CPU venv (default: .peers/vllm/bin/python if built, else no vLLM)",
    )
    ap.add_argument(
        "--vllm-only", action="store_true",
        help="run only the side-by-side vLLM rows; their results replace the `vllm` key of --out",
    )  # fmt: skip
    ap.add_argument(
        "--llama-python",
        help="python of a llama-cpp-python venv for the int4 row (default: .peers/llama/bin/python if built)",
    )
    ap.add_argument("--rows", nargs="+", default=list(PEER_ROWS), choices=PEER_ROWS, help="vLLM rows to run")
    ap.add_argument(
        "--vllm-quantization", nargs="*", default=["int8", "int4"], choices=["int8", "int4"],
        help="also run Tandem's batch-1 decode with these weights against vLLM fp32",
    )  # fmt: skip
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--out", default=str(RESULTS))
    return ap.parse_args(argv)


def measure_end_to_end(llm: LLM, reqs, model_dir: str, peak: float) -> dict:
    """The result's header (model, machine, workload) and the engine's end-to-end row."""
    useful = sum(o for _, o in reqs)
    prompt_tokens = sum(len(p) for p, _ in reqs)
    engine_s = run_engine(llm, reqs)
    result = {
        "model": Path(model_dir).name,
        "dtype": "float32",
        "machine": {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
                    "cores": os.cpu_count(), "torch": torch.__version__},
        "gemm_peak_gflops": peak / 1e9,
        "workload": {"num_requests": len(reqs), "prompt_tokens": prompt_tokens, "output_tokens": useful,
                     "prompt_range": [32, 512], "output_range": [16, 256]},
        "engine": {"seconds": engine_s, "output_tokens_per_s": useful / engine_s,
                   "total_tokens_per_s": (useful + prompt_tokens) / engine_s},
    }  # fmt: skip
    print(f"engine: {engine_s:.1f}s, {useful / engine_s:.1f} output tok/s")
    return result


def measure_phases(
    llm: LLM, flops: FlopModel, vocab: int, args: argparse.Namespace, peak: float
) -> tuple[dict, list[dict]]:
    """Prefill and decode (one row per ``--decode-batch``), each with its fraction of the GEMM peak."""
    pre = measure_prefill(llm, flops, vocab, args.prefill_len, 8)
    pre["fraction_of_gemm_peak"] = pre["flops_per_s"] / peak
    print(f"prefill: {pre['tokens_per_s']:.0f} tok/s, {pre['fraction_of_gemm_peak']:.0%} of GEMM peak")
    decode = []
    for b in args.decode_batch:
        dec = measure_decode(llm, flops, vocab, b, 128, 48)
        dec["fraction_of_gemm_peak"] = dec["flops_per_s"] / peak
        decode.append(dec)
        print(
            f"decode batch {b}: {dec['tokens_per_s']:.0f} tok/s, {dec['fraction_of_gemm_peak']:.0%} of GEMM peak"
        )
    return pre, decode


def measure_hf(model_dir: str, reqs, batch_size: int, engine_s: float) -> dict:
    """The transformers baseline on the same requests."""
    useful = sum(o for _, o in reqs)
    hf_s = run_hf(model_dir, reqs, batch_size)
    print(f"transformers: {hf_s:.1f}s, {useful / hf_s:.1f} output tok/s -> engine is {hf_s / engine_s:.2f}x")
    return {"seconds": hf_s, "batch_size": batch_size, "output_tokens_per_s": useful / hf_s}


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    torch.manual_seed(args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)
    model_dir = args.model or default_model_dir()
    cfg = ModelConfig.from_dir(model_dir)
    flops = FlopModel(cfg)
    if args.quantization_only:
        return _quantization_only(args, model_dir, flops, cfg.vocab_size)
    if args.vllm_only:
        return _vllm_only(args, model_dir, flops, cfg.vocab_size)
    print(f"model {model_dir}\nthreads {torch.get_num_threads()}; measuring the fp32 GEMM peak ...")
    peak = gemm_peak_flops()
    print(f"GEMM peak {peak / 1e9:.1f} GFLOP/s")

    llm = LLM(model_dir, dtype="float32", max_num_seqs=64, max_num_batched_tokens=2048)
    llm.generate([[100] * 16], SamplingParams(temperature=0.0, max_tokens=2))  # warm-up
    reqs = make_requests(args.num_requests, cfg.vocab_size, args.seed)
    result = measure_end_to_end(llm, reqs, model_dir, peak)
    result["prefill"], result["decode"] = measure_phases(llm, flops, cfg.vocab_size, args, peak)
    if not args.skip_hf:
        engine_s = result["engine"]["seconds"]
        result["hf"] = measure_hf(model_dir, reqs, args.hf_batch_size, engine_s)
        result["speedup_vs_hf"] = result["hf"]["seconds"] / engine_s
    result["quantization"] = measure_quantization(model_dir, flops, cfg.vocab_size)
    vllm = _measure_vllm(llm, reqs, flops, cfg.vocab_size, args, model_dir)
    if vllm is not None:
        result["vllm"] = vllm
    _write(Path(args.out), result)
    _refit_profile(Path(args.out))
    return 0


def _measure_vllm(llm: LLM, reqs, flops: FlopModel, vocab: int, args, model_dir: str) -> dict | None:
    """The side-by-side rows against the vLLM peer, or None where no peer venv is given or built."""
    from bench import engine_peer  # it imports this module's measurements

    python = engine_peer.resolve_python(args.vllm_python)
    if python is None:
        return None
    args.llama_python = engine_peer.resolve_python(args.llama_python, engine_peer.LLAMA_PYTHON, "llama")
    peer = engine_peer.VllmPeer(python, model_dir)
    try:
        return engine_peer.compare_with_vllm(llm, peer, reqs, flops, vocab, args)
    finally:
        peer.close()


def _vllm_only(args: argparse.Namespace, model_dir: str, flops: FlopModel, vocab: int) -> int:
    print(f"model {model_dir}\nthreads {torch.get_num_threads()}; vLLM side-by-side rows only")
    llm = LLM(model_dir, dtype="float32", max_num_seqs=64, max_num_batched_tokens=2048)
    llm.generate([[100] * 16], SamplingParams(temperature=0.0, max_tokens=2))  # warm-up
    vllm = _measure_vllm(
        llm, make_requests(args.num_requests, vocab, args.seed), flops, vocab, args, model_dir
    )
    if vllm is None:
        return 1
    out = Path(args.out)
    result = json.loads(out.read_text()) if out.is_file() else {}
    result["vllm"] = vllm
    _write(out, result)
    return 0


def _write(out: Path, result: dict) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


def _quantization_only(args: argparse.Namespace, model_dir: str, flops: FlopModel, vocab: int) -> int:
    print(f"model {model_dir}\nthreads {torch.get_num_threads()}; quantization section only")
    out = Path(args.out)
    result = json.loads(out.read_text()) if out.is_file() else {}
    result["quantization"] = measure_quantization(model_dir, flops, vocab)
    _write(out, result)
    return 0


def _refit_profile(out: Path) -> None:
    """Rewrite the cpu-smollm2 cost profile (simulator, router defaults) from the results written
    to the default place; a run writing elsewhere leaves the profile alone."""
    if out.resolve() == RESULTS.resolve():
        from bench.profile_fit import write_profile

        print(f"refitted {write_profile()}")


if __name__ == "__main__":
    sys.exit(main())
