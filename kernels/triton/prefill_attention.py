"""Prefill attention: the new tokens of many sequences, causal over a paged prefix plus themselves.

One launch covers the whole ragged batch without a host sync. Sequence ``i``'s query tiles own the
program ids ``[cu_q[i] // BLOCK_M + i, ... + cdiv(q_len_i, BLOCK_M))``: these ranges are disjoint
and all fall below ``T // BLOCK_M + B``, so the grid is ``(T // BLOCK_M + B, num_heads)`` and a
program finds its sequence by counting the range starts at or below its id (a few programs past a
sequence's last tile exit at once). Query ``j`` of a sequence sits at position
``context_len - q_len + j``; it attends to keys at positions ``<= `` its own and, with a sliding
window, ``> position - window``. K/V tiles are gathered through the block table token by token, so
the prefix and the new tokens (already written to the cache) are read the same way, by the tile walk
:func:`kernels.triton.decode_attention.attend_paged_kv` that the decode kernel also uses.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.triton.checks import as_index, check_attention, dot_precision, next_pow2
from kernels.triton.paged_tiles import LOG2E, attend_paged_kv


@triton.jit
def _locate_tile(cu_seqlens_ptr, pid, num_seqs, BLOCK_B: tl.constexpr, BLOCK_M: tl.constexpr):
    """Program ``pid``'s ``(seq, q_start, q_len, tile)``: the sequence whose id range holds it, where
    that sequence's queries start in q, how many there are, and which ``BLOCK_M`` tile is this one's
    (possibly past the last: such a program has nothing to do)."""
    seqs = tl.arange(0, BLOCK_B)
    cu = tl.load(cu_seqlens_ptr + seqs, mask=seqs < num_seqs, other=2**30).to(tl.int32)
    seq = tl.sum((cu // BLOCK_M + seqs <= pid).to(tl.int32), axis=0) - 1
    q_start = tl.load(cu_seqlens_ptr + seq).to(tl.int32)
    q_len = tl.load(cu_seqlens_ptr + seq + 1).to(tl.int32) - q_start
    tile = pid - (q_start // BLOCK_M + seq)
    return seq, q_start, q_len, tile


@triton.jit
def _key_bounds(prefix, q_len, tile, window, HAS_WINDOW: tl.constexpr, BLOCK_M: tl.constexpr):
    """Keys ``[lo, hi)`` this tile can see: causal up to its last query, windowed from its first."""
    hi = prefix + tl.minimum(q_len, (tile + 1) * BLOCK_M)
    lo = 0
    if HAS_WINDOW:
        lo = tl.maximum(prefix + tile * BLOCK_M - window + 1, 0)
    return lo, hi


@triton.jit
def _prefill_kernel(
    q_ptr, k_cache_ptr, v_cache_ptr, block_tables_ptr, cu_seqlens_ptr, context_lens_ptr, out_ptr,
    qk_scale, window,
    q_tok_stride, q_head_stride, cache_head_stride, cache_page_stride, cache_tok_stride, block_table_stride,
    num_seqs, num_heads, group, head_dim, page_size,
    HAS_WINDOW: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    head = tl.program_id(1).to(tl.int64)
    seq, q_start, q_len, tile = _locate_tile(cu_seqlens_ptr, tl.program_id(0), num_seqs, BLOCK_B, BLOCK_M)
    if tile * BLOCK_M >= q_len:
        return

    prefix = tl.load(context_lens_ptr + seq).to(tl.int32) - q_len
    m = tile * BLOCK_M + tl.arange(0, BLOCK_M)
    d = tl.arange(0, BLOCK_D)
    mask = (m < q_len)[:, None] & (d < head_dim)[None, :]
    q_offs = (q_start + m).to(tl.int64)[:, None] * q_tok_stride + head * q_head_stride + d[None, :]
    q = tl.load(q_ptr + q_offs, mask=mask, other=0.0)

    lo, hi = _key_bounds(prefix, q_len, tile, window, HAS_WINDOW, BLOCK_M)
    m_i, l_i, acc = attend_paged_kv(
        q, prefix + m, lo, hi, k_cache_ptr, v_cache_ptr, block_tables_ptr + seq.to(tl.int64) * block_table_stride,
        (head // group) * cache_head_stride, qk_scale, window, head_dim, page_size, cache_page_stride,
        cache_tok_stride, CAUSAL=True, HAS_WINDOW=HAS_WINDOW, DOT_PRECISION=DOT_PRECISION, BLOCK_ROWS=BLOCK_M,
        BLOCK_N=BLOCK_N, BLOCK_D=BLOCK_D,
    )  # fmt: skip

    # Rows past the sequence's queries may have seen no key; they are not stored, but avoid 0 / 0.
    out = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]
    out_offs = ((q_start + m).to(tl.int64)[:, None] * num_heads + head) * head_dim + d[None, :]
    tl.store(out_ptr + out_offs, out.to(out_ptr.dtype.element_ty), mask=mask)


def _check_tables(
    q: torch.Tensor, block_tables: torch.Tensor, cu_seqlens_q: torch.Tensor, context_lens: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The index tensors contiguous on q's device, after checking they describe one batch of B
    sequences: ``block_tables [B, n]``, ``cu_seqlens_q [B+1]``, ``context_lens [B]``."""
    block_tables = as_index("block_tables", block_tables, 2, q.device)
    cu_seqlens_q = as_index("cu_seqlens_q", cu_seqlens_q, 1, q.device)
    context_lens = as_index("context_lens", context_lens, 1, q.device)
    batch = context_lens.shape[0]
    if cu_seqlens_q.shape[0] != batch + 1 or block_tables.shape[0] != batch:
        raise ValueError(
            f"cu_seqlens_q {tuple(cu_seqlens_q.shape)} must be [B+1] and block_tables "
            f"{tuple(block_tables.shape)} [B, n] for B={batch} context_lens"
        )
    return block_tables, cu_seqlens_q, context_lens


def _tile_sizes(head_dim: int, block_m: int | None, block_n: int | None) -> tuple[int, int, int]:
    """``(BLOCK_M, BLOCK_N, BLOCK_D)``: the overrides where given, else smaller tiles for wider heads."""
    block_d = next_pow2(head_dim, 16)  # tl.dot needs every dimension >= 16
    block_m = block_m or (128 if block_d <= 64 else 64)
    block_n = block_n or (64 if block_d <= 128 else 32)
    return block_m, block_n, block_d


def prefill_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    context_lens: torch.Tensor,
    scale: float,
    sliding_window: int | None = None,
    *,
    block_m: int | None = None,
    block_n: int | None = None,
) -> torch.Tensor:
    """Same contract as :func:`kernels.reference.prefill_attention`.

    ``block_m`` / ``block_n`` override the tile sizes (tests and tuning). For every sequence,
    ``q_len <= context_len`` and ``block_tables`` must cover ``context_len`` tokens; that is not
    checked (it would need a device sync).
    """
    num_heads, num_kv_heads, page_size, head_dim = check_attention(q, k_cache, v_cache, sliding_window)
    block_tables, cu_seqlens_q, context_lens = _check_tables(q, block_tables, cu_seqlens_q, context_lens)
    num_tokens, batch = q.shape[0], context_lens.shape[0]
    out = torch.empty((num_tokens, num_heads, head_dim), dtype=q.dtype, device=q.device)
    if num_tokens == 0 or batch == 0:
        return out

    block_m, block_n, block_d = _tile_sizes(head_dim, block_m, block_n)
    _prefill_kernel[(num_tokens // block_m + batch, num_heads)](
        q, k_cache, v_cache, block_tables, cu_seqlens_q, context_lens, out,
        scale * LOG2E, sliding_window or 0,
        q.stride(0), q.stride(1), k_cache.stride(0), k_cache.stride(1), k_cache.stride(2), block_tables.stride(0),
        batch, num_heads, num_heads // num_kv_heads, head_dim, page_size,
        HAS_WINDOW=sliding_window is not None, DOT_PRECISION=dot_precision(q.dtype), BLOCK_B=next_pow2(batch),
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=block_d, num_warps=4 if block_d <= 64 else 8, num_stages=2,
    )  # fmt: skip
    return out
