"""Kernel benchmark: every Triton op against its PyTorch reference, same inputs, same run, one GPU.

Reports, per case: the median time of each implementation (L2 flushed before every run, via
``triton.testing.do_bench``), the speedup, and the largest difference between their outputs. Paged
decode attention also reports the achieved memory bandwidth (K/V bytes read plus q and out) as a
fraction of the device's peak, and prefill attention its TFLOP/s (causal FLOPs actually needed).
Results go to ``bench/results/kernels.json``. Without CUDA there is nothing to measure: the program
says so and exits with status 2.

    python -m bench.kernels            # full set
    python -m bench.kernels --quick    # a few cases per kernel
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

import torch

if (
    not __package__
):  # run as `python bench/kernels.py`: sys.path[0] is bench/, where this file shadows kernels/
    sys.path[0] = str(Path(__file__).resolve().parents[1])

from kernels import reference, triton_ops  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "kernels.json"
Timer = Callable[[Callable[[], object]], float]  # fn -> median milliseconds

# (batch, context_len, num_heads, num_kv_heads, head_dim, page_size)
DECODE_CASES = [
    (1, 4096, 32, 8, 128, 16),
    (8, 2048, 32, 8, 128, 16),
    (32, 1024, 32, 8, 128, 16),
    (32, 4096, 32, 8, 128, 16),
    (64, 2048, 32, 8, 128, 16),
    (128, 1024, 32, 8, 128, 16),
    (64, 2048, 9, 3, 64, 16),
    (16, 16384, 32, 8, 128, 16),
]
# (batch, new_tokens, cached_prefix, num_heads, num_kv_heads, head_dim, page_size)
PREFILL_CASES = [
    (1, 2048, 0, 32, 8, 128, 16),
    (4, 1024, 0, 32, 8, 128, 16),
    (2, 512, 3584, 32, 8, 128, 16),
    (1, 8192, 0, 32, 8, 128, 16),
    (8, 512, 0, 9, 3, 64, 16),
]


def _max_diff(a, b) -> float:
    if isinstance(a, tuple):
        return max(_max_diff(x, y) for x, y in zip(a, b))
    return (a.float() - b.float()).abs().max().item()


def _compare(timer: Timer, fast: Callable[[], object], ref: Callable[[], object]) -> dict:
    diff = _max_diff(fast(), ref())
    triton_ms, torch_ms = timer(fast), timer(ref)
    return {
        "triton_ms": triton_ms,
        "torch_ms": torch_ms,
        "speedup": torch_ms / triton_ms,
        "max_abs_diff": diff,
    }


def _paged(batch, tokens_per_seq, num_kv_heads, head_dim, page_size, dtype, device):
    """A one-layer cache holding ``batch`` sequences in shuffled pages, and their block tables."""
    pages_per_seq = -(-tokens_per_seq // page_size)
    num_pages = batch * pages_per_seq
    kv = torch.randn(2, num_kv_heads, num_pages, page_size, head_dim, dtype=dtype, device=device)
    tables = torch.randperm(num_pages, device=device).view(batch, pages_per_seq).to(torch.int32)
    return kv[0], kv[1], tables


def bench_decode(case, dtype, device, timer: Timer, peak_gbps: float) -> dict:
    batch, ctx, num_heads, num_kv_heads, head_dim, page_size = case
    k_cache, v_cache, tables = _paged(batch, ctx, num_kv_heads, head_dim, page_size, dtype, device)
    q = torch.randn(batch, num_heads, head_dim, dtype=dtype, device=device)
    lens = torch.full((batch,), ctx, device=device, dtype=torch.int32)
    args = (q, k_cache, v_cache, tables, lens, head_dim**-0.5)
    row = _compare(
        timer,
        lambda: triton_ops.paged_decode_attention(*args),
        lambda: reference.paged_decode_attention(*args),
    )
    elt = q.element_size()
    moved = batch * ctx * num_kv_heads * head_dim * 2 * elt + 2 * q.numel() * elt
    gbps = moved / row["triton_ms"] / 1e6
    keys = ("batch", "context_len", "num_heads", "num_kv_heads", "head_dim", "page_size")
    return {
        **dict(zip(keys, case)),
        **row,
        "bytes": moved,
        "triton_GBps": gbps,
        "fraction_of_peak": gbps / peak_gbps,
    }


def bench_prefill(case, dtype, device, timer: Timer) -> dict:
    batch, new, prefix, num_heads, num_kv_heads, head_dim, page_size = case
    k_cache, v_cache, tables = _paged(batch, prefix + new, num_kv_heads, head_dim, page_size, dtype, device)
    q = torch.randn(batch * new, num_heads, head_dim, dtype=dtype, device=device)
    cu = torch.arange(0, batch * new + 1, new, device=device, dtype=torch.int32)
    lens = torch.full((batch,), prefix + new, device=device, dtype=torch.int32)
    args = (q, k_cache, v_cache, tables, cu, lens, head_dim**-0.5)
    row = _compare(
        timer, lambda: triton_ops.prefill_attention(*args), lambda: reference.prefill_attention(*args)
    )
    visible = batch * (new * prefix + new * (new + 1) // 2)  # (query, key) pairs under the causal mask
    flops = 4 * visible * num_heads * head_dim  # QK^T and PV, a multiply-add each
    keys = ("batch", "new_tokens", "cached_prefix", "num_heads", "num_kv_heads", "head_dim", "page_size")
    return {
        **dict(zip(keys, case)),
        **row,
        "flops": flops,
        "triton_TFLOPs": flops / row["triton_ms"] / 1e9,
        "torch_TFLOPs": flops / row["torch_ms"] / 1e9,
    }


def small_op_cases(dtype, device) -> list[tuple[str, Callable[[], object], Callable[[], object]]]:
    """(name, triton call, reference call) on engine-sized inputs (Llama-3-8B layer shapes)."""
    tokens, hidden, inter, heads, kv_heads, dim = 4096, 4096, 14336, 32, 8, 128

    def randn(*shape):
        return torch.randn(*shape, dtype=dtype, device=device)

    x, res, w = randn(tokens, hidden), randn(tokens, hidden), randn(hidden)
    gate_up = randn(tokens, 2 * inter)
    q, k = randn(tokens, heads, dim), randn(tokens, kv_heads, dim)
    pos = torch.randint(0, 8192, (tokens,), device=device)
    cos, sin = torch.randn(8192, dim, device=device), torch.randn(8192, dim, device=device)
    kv_cache = randn(32, 2, kv_heads, 512, 16, dim)
    return [
        (
            "rms_norm+residual",
            lambda: triton_ops.rms_norm(x, w, 1e-6, res),
            lambda: reference.rms_norm(x, w, 1e-6, res),
        ),
        ("silu_and_mul", lambda: triton_ops.silu_and_mul(gate_up), lambda: reference.silu_and_mul(gate_up)),
        ("rope", lambda: triton_ops.rope(q, k, pos, cos, sin), lambda: reference.rope(q, k, pos, cos, sin)),
        *_cache_op_cases(k, kv_cache),
    ]


def _cache_op_cases(
    kv: torch.Tensor, kv_cache: torch.Tensor
) -> list[tuple[str, Callable[[], object], Callable[[], object]]]:
    """write_kv (``kv`` as both K and V of layer 0), pack_pages and unpack_pages (one 16-page chunk)
    on ``kv_cache [L, 2, Hk, P, page, D]``."""
    num_pages, page_size = kv_cache.shape[3], kv_cache.shape[4]
    slots = torch.randperm(num_pages * page_size, device=kv_cache.device)[: kv.shape[0]]
    page_ids = torch.randperm(num_pages, device=kv_cache.device)[:16]  # one 256-token chunk
    chunk = triton_ops.pack_pages(kv_cache, page_ids)
    fast_cache, ref_cache = kv_cache, kv_cache.clone()  # in-place ops write separate copies, compared after
    return [
        (
            "write_kv",
            lambda: (triton_ops.write_kv(kv, kv, fast_cache[0, 0], fast_cache[0, 1], slots), fast_cache)[1],
            lambda: (reference.write_kv(kv, kv, ref_cache[0, 0], ref_cache[0, 1], slots), ref_cache)[1],
        ),
        (
            "pack_pages",
            lambda: triton_ops.pack_pages(kv_cache, page_ids),
            lambda: reference.pack_pages(kv_cache, page_ids),
        ),
        (
            "unpack_pages",
            lambda: (triton_ops.unpack_pages(fast_cache, page_ids, chunk), fast_cache)[1],
            lambda: (reference.unpack_pages(ref_cache, page_ids, chunk), ref_cache)[1],
        ),
    ]


def peak_bandwidth_gbps(device: torch.device) -> float:
    """Theoretical DRAM bandwidth: double data rate x memory clock x bus width."""
    props = torch.cuda.get_device_properties(device)
    return 2 * props.memory_clock_rate * 1e3 * props.memory_bus_width / 8 / 1e9


def copy_bandwidth_gbps(timer: Timer, device: torch.device) -> float:
    """What a plain device-to-device copy of 1 GiB achieves: the practical ceiling for comparison."""
    src = torch.empty(1 << 30, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    return 2 * src.numel() / timer(lambda: dst.copy_(src)) / 1e6


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--dtype", choices=["bfloat16", "float16"], default="bfloat16")
    parser.add_argument("--quick", action="store_true", help="a few cases per kernel")
    parser.add_argument("--rep-ms", type=int, default=100, help="timed milliseconds per measurement")
    parser.add_argument("--peak-gbps", type=float, help="override the device's peak DRAM bandwidth (GB/s)")
    parser.add_argument("--out", type=Path, default=RESULTS, help=f"JSON results (default {RESULTS})")
    return parser.parse_args(argv)


def run_cases(
    args: argparse.Namespace, dtype, device, timer: Timer, peak_gbps: float
) -> dict[str, list[dict]]:
    """Every case (the first few per kernel with ``--quick``), one result row each."""
    from tqdm import tqdm

    decode_cases = DECODE_CASES[:3] if args.quick else DECODE_CASES
    prefill_cases = PREFILL_CASES[:2] if args.quick else PREFILL_CASES
    rows: dict[str, list[dict]] = {"decode_attention": [], "prefill_attention": [], "small_ops": []}
    total = len(decode_cases) + len(prefill_cases) + 6
    with tqdm(total=total, desc="kernels", unit="case") as bar:
        for case in decode_cases:
            rows["decode_attention"].append(bench_decode(case, dtype, device, timer, peak_gbps))
            torch.cuda.empty_cache()
            bar.update()
        for case in prefill_cases:
            rows["prefill_attention"].append(bench_prefill(case, dtype, device, timer))
            torch.cuda.empty_cache()
            bar.update()
        for name, fast, ref in small_op_cases(dtype, device):
            rows["small_ops"].append({"op": name, **_compare(timer, fast, ref)})
            bar.update()
    return rows


def print_summary(result: dict) -> None:
    for row in result["decode_attention"]:
        print(
            f"decode  B={row['batch']:<4} ctx={row['context_len']:<6} {row['triton_GBps']:8.0f} GB/s "
            f"({row['fraction_of_peak']:.0%} of peak)  x{row['speedup']:.1f} vs torch"
        )
    for row in result["prefill_attention"]:
        print(
            f"prefill B={row['batch']:<4} new={row['new_tokens']:<5} prefix={row['cached_prefix']:<5} "
            f"{row['triton_TFLOPs']:6.1f} TFLOP/s  x{row['speedup']:.1f} vs torch"
        )
    for row in result["small_ops"]:
        print(
            f"{row['op']:<18} {row['triton_ms']:.3f} ms vs torch {row['torch_ms']:.3f} ms  x{row['speedup']:.1f}"
        )


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    if not torch.cuda.is_available():
        print(
            "bench/kernels.py measures Triton kernels on a CUDA GPU and none is available here; nothing measured.",
            file=sys.stderr,
        )
        return 2
    import triton
    from triton.testing import do_bench

    device = torch.device("cuda")
    dtype = getattr(torch, args.dtype)
    torch.manual_seed(0)

    def timer(fn):
        return do_bench(fn, warmup=25, rep=args.rep_ms, return_mode="median")

    peak = args.peak_gbps or peak_bandwidth_gbps(device)
    result = {
        "device": torch.cuda.get_device_name(device),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "dtype": args.dtype,
        "peak_GBps": peak,
        "copy_GBps": copy_bandwidth_gbps(timer, device),
        **run_cases(args, dtype, device, timer, peak),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    os.replace(tmp, args.out)
    print_summary(result)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
