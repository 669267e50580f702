"""Paged decode attention, Flash-Decoding style: split-K over each sequence's KV, then a reduction.

Grid ``(batch, num_kv_heads, num_splits)``. A program owns one KV head and all ``group`` query heads
that share it (GQA/MQA), so each K/V tile is read from memory once per head group. A sequence's
attended range ``[lo, context_len)`` (``lo > 0`` only with a sliding window) is cut into
``num_splits`` equal runs of whole ``BLOCK_N`` tiles. Each program walks its run with an online
softmax and writes an unnormalized partial ``(acc, max, sum)``; the reduction kernel rescales the
partials onto a common maximum and normalizes. With one split the first kernel writes the output.

Tiles are gathered token by token through the block table, so ``BLOCK_N`` is independent of the page
size and a tile may straddle pages. Scores use base-2 exponentials with ``log2(e)`` folded into the
scale; all softmax arithmetic is float32 whatever the cache dtype.

:func:`kernels.triton.paged_tiles.attend_paged_kv`, the tile walk with its online softmax, is shared
with the prefill kernel.
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from kernels.triton.checks import as_index, check_attention, dot_precision, next_pow2
from kernels.triton.paged_tiles import LOG2E, attend_paged_kv


@triton.jit
def _split_bounds(
    context_lens_ptr, seq, split, window, num_splits, HAS_WINDOW: tl.constexpr, BLOCK_N: tl.constexpr
):
    """This split's token range ``[lo, hi)``: an equal run of whole ``BLOCK_N`` tiles of the
    attended range ``[max(ctx - window, 0), ctx)``."""
    ctx = tl.load(context_lens_ptr + seq).to(tl.int32)
    seq_lo = 0
    if HAS_WINDOW:
        seq_lo = tl.maximum(ctx - window, 0)
    run = tl.cdiv(tl.cdiv(ctx - seq_lo, num_splits), BLOCK_N) * BLOCK_N
    lo = seq_lo + split * run
    hi = tl.minimum(lo + run, ctx)
    return lo, hi


@triton.jit
def _store_split(
    out_ptr, part_acc_ptr, part_max_ptr, part_sum_ptr, acc, m_i, l_i, seq, heads, split, g_mask,
    num_heads, head_dim, num_splits, ONE_SPLIT: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    """The normalized output (one split) or this split's unnormalized partial ``(acc, max, sum)``."""
    d = tl.arange(0, BLOCK_D)
    out_mask = g_mask[:, None] & (d < head_dim)[None, :]
    if ONE_SPLIT:
        out = acc / l_i[:, None]
        out_offs = (seq * num_heads + heads[:, None]) * head_dim + d[None, :]
        tl.store(out_ptr + out_offs, out.to(out_ptr.dtype.element_ty), mask=out_mask)
    else:
        part = (seq * num_heads + heads) * num_splits + split  # [B, Hq, S] row of each query head
        tl.store(part_acc_ptr + part[:, None] * head_dim + d[None, :], acc, mask=out_mask)
        tl.store(part_max_ptr + part, m_i, mask=g_mask)
        tl.store(part_sum_ptr + part, l_i, mask=g_mask)


@triton.jit
def _decode_split_kernel(
    q_ptr, k_cache_ptr, v_cache_ptr, block_tables_ptr, context_lens_ptr,
    out_ptr, part_acc_ptr, part_max_ptr, part_sum_ptr, qk_scale, window,
    q_batch_stride, q_head_stride, cache_head_stride, cache_page_stride, cache_tok_stride, block_table_stride,
    num_heads, group, head_dim, page_size, num_splits,
    HAS_WINDOW: tl.constexpr, ONE_SPLIT: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_G: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    seq = tl.program_id(0).to(tl.int64)
    kv_head = tl.program_id(1).to(tl.int64)
    split = tl.program_id(2)
    lo, hi = _split_bounds(context_lens_ptr, seq, split, window, num_splits, HAS_WINDOW, BLOCK_N)

    g = tl.arange(0, BLOCK_G)
    d = tl.arange(0, BLOCK_D)
    heads = kv_head * group + g  # query heads of this group
    g_mask = g < group
    q = tl.load(
        q_ptr + seq * q_batch_stride + heads[:, None] * q_head_stride + d[None, :],
        mask=g_mask[:, None] & (d < head_dim)[None, :],
        other=0.0,
    )
    # The window is applied through lo, so the walk masks only keys past hi (q_pos is unused).
    m_i, l_i, acc = attend_paged_kv(
        q, 0, lo, hi, k_cache_ptr, v_cache_ptr, block_tables_ptr + seq * block_table_stride,
        kv_head * cache_head_stride, qk_scale, window, head_dim, page_size, cache_page_stride, cache_tok_stride,
        CAUSAL=False, HAS_WINDOW=False, DOT_PRECISION=DOT_PRECISION, BLOCK_ROWS=BLOCK_G, BLOCK_N=BLOCK_N,
        BLOCK_D=BLOCK_D,
    )  # fmt: skip
    _store_split(
        out_ptr, part_acc_ptr, part_max_ptr, part_sum_ptr, acc, m_i, l_i, seq, heads, split, g_mask,
        num_heads, head_dim, num_splits, ONE_SPLIT, BLOCK_D,
    )  # fmt: skip


@triton.jit
def _decode_reduce_kernel(
    part_acc_ptr,
    part_max_ptr,
    part_sum_ptr,
    out_ptr,
    head_dim,
    num_splits,
    BLOCK_S: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)  # seq * num_heads + head
    s = tl.arange(0, BLOCK_S)
    d = tl.arange(0, BLOCK_D)
    s_mask = s < num_splits
    maxes = tl.load(part_max_ptr + row * num_splits + s, mask=s_mask, other=float("-inf"))
    sums = tl.load(part_sum_ptr + row * num_splits + s, mask=s_mask, other=0.0)
    acc = tl.load(
        part_acc_ptr + (row * num_splits + s[:, None]) * head_dim + d[None, :],
        mask=s_mask[:, None] & (d[None, :] < head_dim),
        other=0.0,
    )
    w = tl.exp2(maxes - tl.max(maxes, axis=0))  # rescale every split onto the common maximum
    out = tl.sum(acc * w[:, None], axis=0) / tl.sum(sums * w, axis=0)
    tl.store(out_ptr + row * head_dim + d, out.to(out_ptr.dtype.element_ty), mask=d < head_dim)


@functools.cache
def _sm_count(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def default_num_splits(
    batch: int, num_kv_heads: int, max_tokens: int, block_n: int, device: torch.device
) -> int:
    """Enough splits that ``batch * num_kv_heads * splits`` programs fill the GPU about twice over."""
    sms = (
        _sm_count(device.index if device.index is not None else torch.cuda.current_device())
        if device.type == "cuda"
        else 1
    )
    wanted = triton.cdiv(2 * sms, max(1, batch * num_kv_heads))
    return max(1, min(wanted, triton.cdiv(max_tokens, block_n), 64))


def _check_tables(
    q: torch.Tensor, block_tables: torch.Tensor, context_lens: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``block_tables`` and ``context_lens`` as contiguous index tensors on q's device, one row per
    sequence of ``q``."""
    batch = q.shape[0]
    block_tables = as_index("block_tables", block_tables, 2, q.device)
    context_lens = as_index("context_lens", context_lens, 1, q.device)
    if block_tables.shape[0] != batch or context_lens.shape[0] != batch:
        raise ValueError(
            f"block_tables {tuple(block_tables.shape)} and context_lens {tuple(context_lens.shape)} "
            f"need one row per sequence ({batch})"
        )
    return block_tables, context_lens


def _max_attended_tokens(block_tables: torch.Tensor, page_size: int, sliding_window: int | None) -> int:
    """An upper bound on the keys one sequence attends to: its table's capacity, capped by the window."""
    max_tokens = block_tables.shape[1] * page_size
    if sliding_window is not None:
        max_tokens = min(max_tokens, sliding_window)
    return max_tokens


def _split_config(
    q: torch.Tensor, num_kv_heads: int, max_tokens: int, num_splits: int | None, block_n: int | None
) -> tuple[int, int]:
    """``(num_splits, BLOCK_N)``: the overrides where given, else 64-token tiles and enough splits
    to fill the GPU (:func:`default_num_splits`)."""
    block_n = block_n or 64
    if num_splits is None:
        num_splits = default_num_splits(q.shape[0], num_kv_heads, max_tokens, block_n, q.device)
    return num_splits, block_n


def _alloc_partials(out: torch.Tensor, num_splits: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Float32 partials ``(acc [B, Hq, S, D], max [B, Hq, S], sum [B, Hq, S])`` of the splits. With
    one split the kernel writes ``out`` directly and never touches them, so ``out`` stands in."""
    if num_splits == 1:
        return out, out, out
    batch, num_heads, head_dim = out.shape
    part_acc = torch.empty((batch, num_heads, num_splits, head_dim), dtype=torch.float32, device=out.device)
    part_max = torch.empty((batch, num_heads, num_splits), dtype=torch.float32, device=out.device)
    return part_acc, part_max, torch.empty_like(part_max)


def _reduce_partials(
    part_acc: torch.Tensor, part_max: torch.Tensor, part_sum: torch.Tensor, out: torch.Tensor
) -> None:
    """Rescale the splits' partials onto their common maximum and write the normalized ``out``."""
    batch, num_heads, num_splits, head_dim = part_acc.shape
    _decode_reduce_kernel[(batch * num_heads,)](
        part_acc, part_max, part_sum, out, head_dim, num_splits,
        BLOCK_S=next_pow2(num_splits), BLOCK_D=next_pow2(head_dim, 16), num_warps=4,
    )  # fmt: skip


def paged_decode_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    context_lens: torch.Tensor,
    scale: float,
    sliding_window: int | None = None,
    *,
    num_splits: int | None = None,
    block_n: int | None = None,
) -> torch.Tensor:
    """Same contract as :func:`kernels.reference.paged_decode_attention`.

    ``num_splits`` / ``block_n`` override the launch configuration (tests and tuning). Every
    ``context_lens[b]`` must be at least 1 and covered by ``block_tables[b]``; that is not checked
    (it would need a device sync).
    """
    num_heads, num_kv_heads, page_size, head_dim = check_attention(q, k_cache, v_cache, sliding_window)
    block_tables, context_lens = _check_tables(q, block_tables, context_lens)
    batch, group = q.shape[0], num_heads // num_kv_heads
    out = torch.empty((batch, num_heads, head_dim), dtype=q.dtype, device=q.device)
    if batch == 0:
        return out
    max_tokens = _max_attended_tokens(block_tables, page_size, sliding_window)
    num_splits, block_n = _split_config(q, num_kv_heads, max_tokens, num_splits, block_n)
    part_acc, part_max, part_sum = _alloc_partials(out, num_splits)
    _decode_split_kernel[(batch, num_kv_heads, num_splits)](
        q, k_cache, v_cache, block_tables, context_lens, out, part_acc, part_max, part_sum,
        scale * LOG2E, sliding_window or 0,
        q.stride(0), q.stride(1), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2), block_tables.stride(0),
        num_heads, group, head_dim, page_size, num_splits,
        HAS_WINDOW=sliding_window is not None, ONE_SPLIT=num_splits == 1, DOT_PRECISION=dot_precision(q.dtype),
        BLOCK_G=next_pow2(group, 16), BLOCK_N=block_n, BLOCK_D=next_pow2(head_dim, 16),  # tl.dot needs >= 16
        num_warps=4, num_stages=2,
    )  # fmt: skip
    if num_splits != 1:
        _reduce_partials(part_acc, part_max, part_sum, out)
    return out
