"""Engine flags shared by every command that runs an engine (workers, ``tandem generate``)."""

from __future__ import annotations

import argparse

import torch

from engine.config import DTYPES, KV_DTYPES, QUANTIZATIONS, EngineConfig
from engine.llm_engine import LLMEngine, default_device
from engine.memory import tune_host_allocator


def add_engine_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("engine")
    g.add_argument(
        "--dtype", default="float32", choices=sorted(DTYPES), help="weights and KV dtype (float32 on CPU)"
    )
    g.add_argument(
        "--quantization", default=None, choices=QUANTIZATIONS,
        help="weight-only quantization of the linears and LM head (default: none, weights in --dtype)",
    )  # fmt: skip
    g.add_argument(
        "--kv-dtype", default="auto", choices=KV_DTYPES,
        help="KV as it leaves this engine, to a decode worker or the store: auto (the cache's dtype, "
        "exact) or int8 (a scale per head vector, ~1/4 of float32's bytes; the pages keep --dtype). "
        "Give prefill and decode workers the same: an auto worker refuses int8 KV",
    )  # fmt: skip
    g.add_argument(
        "--no-prepack",
        dest="prepack",
        action="store_false",
        help="run float32 linears on CPU through plain F.linear instead of oneDNN with weights reordered "
        "at load (the default; about 2x faster at decode batch sizes)",
    )
    g.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    g.add_argument("--page-size", type=int, default=16, help="tokens per KV page (default 16)")
    g.add_argument("--num-pages", type=int, default=None, help="KV pages (default: sized from free memory)")
    g.add_argument("--max-num-seqs", type=int, default=64, help="sequences batched at once (default 64)")
    g.add_argument(
        "--max-num-batched-tokens", type=int, default=2048, help="token budget of one step (default 2048)"
    )
    g.add_argument("--max-model-len", type=int, default=None, help="context limit (default: the model's)")
    g.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")


def engine_config(args: argparse.Namespace, model_dir: str, device: str) -> EngineConfig:
    return EngineConfig(
        model=model_dir,
        dtype=args.dtype,
        device=args.device or device,
        page_size=args.page_size,
        num_pages=args.num_pages,
        max_num_seqs=args.max_num_seqs,
        max_num_batched_tokens=args.max_num_batched_tokens,
        max_model_len=args.max_model_len,
        quantization=args.quantization,
        kv_dtype=args.kv_dtype,
        prepack=args.prepack,
    )


def build_engine(args: argparse.Namespace, model_dir: str) -> LLMEngine:
    """An engine for a serving process: thread count and host allocator set first."""
    if args.threads:
        torch.set_num_threads(args.threads)
    tune_host_allocator()
    return LLMEngine(engine_config(args, model_dir, default_device()))
