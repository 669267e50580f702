"""The tile walk both paged attention kernels share: K/V tiles gathered token by token through a
block table, masked (causal and sliding window when asked), folded into an online softmax.

Scores use base-2 exponentials: callers fold ``log2(e)`` (``LOG2E``) into the scale. All softmax
arithmetic is float32 whatever the cache dtype.
"""

from __future__ import annotations

import triton
import triton.language as tl

LOG2E = 1.4426950408889634


@triton.jit
def _attend_tile(
    q, q_pos, tok, hi, m_i, l_i, acc, k_cache_ptr, v_cache_ptr, table_ptr, head_base, qk_scale, window,
    head_dim, page_size, cache_page_stride, cache_tok_stride,
    CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr, DOT_PRECISION: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    """Fold keys ``tok`` (those below ``hi``), gathered through one block-table row, into the
    running ``(max, sum, acc)`` of base-2 scores. With ``CAUSAL``, query row ``r`` sits at position
    ``q_pos[r]`` and sees keys at or before it (and, with a window, after ``q_pos[r] - window``)."""
    d = tl.arange(0, BLOCK_D)
    n_mask = tok < hi
    page = tl.load(table_ptr + tok // page_size, mask=n_mask, other=0)
    row = head_base + page.to(tl.int64) * cache_page_stride + (tok % page_size) * cache_tok_stride
    kv_offs = row[:, None] + d[None, :]
    kv_mask = n_mask[:, None] & (d < head_dim)[None, :]
    k = tl.load(k_cache_ptr + kv_offs, mask=kv_mask, other=0.0)
    v = tl.load(v_cache_ptr + kv_offs, mask=kv_mask, other=0.0)

    visible = n_mask[None, :]
    if CAUSAL:
        visible = visible & (tok[None, :] <= q_pos[:, None])
        if HAS_WINDOW:
            visible = visible & (tok[None, :] > q_pos[:, None] - window)
    s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale
    s = tl.where(visible, s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, axis=1))
    alpha = tl.exp2(m_i - m_new)
    p = tl.exp2(s - m_new[:, None])
    l_i = l_i * alpha + tl.sum(p, axis=1)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PRECISION)
    return m_new, l_i, acc


@triton.jit
def attend_paged_kv(
    q, q_pos, lo, hi, k_cache_ptr, v_cache_ptr, table_ptr, head_base, qk_scale, window, head_dim,
    page_size, cache_page_stride, cache_tok_stride,
    CAUSAL: tl.constexpr, HAS_WINDOW: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_ROWS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
):  # fmt: skip
    """Walk keys ``[lo, hi)`` of one KV head in ``BLOCK_N`` tiles with an online softmax.

    ``q`` is ``[BLOCK_ROWS, BLOCK_D]``; ``q_pos`` is read only with ``CAUSAL`` (see
    :func:`_attend_tile`). Returns the unnormalized ``(max, sum, acc)``; a row that saw no key has
    sum 0.
    """
    n = tl.arange(0, BLOCK_N)
    # Running maxima start finite: a row masked out of a whole tile then gets exp2(-inf - m) = 0,
    # never exp2(-inf - -inf) = NaN.
    m_i = tl.full([BLOCK_ROWS], -1.0e30, tl.float32)
    l_i = tl.zeros([BLOCK_ROWS], tl.float32)
    acc = tl.zeros([BLOCK_ROWS, BLOCK_D], tl.float32)
    for start in tl.range(lo, hi, BLOCK_N):
        m_i, l_i, acc = _attend_tile(
            q, q_pos, start + n, hi, m_i, l_i, acc, k_cache_ptr, v_cache_ptr, table_ptr, head_base, qk_scale,
            window, head_dim, page_size, cache_page_stride, cache_tok_stride,
            CAUSAL, HAS_WINDOW, DOT_PRECISION, BLOCK_D,
        )  # fmt: skip
    return m_i, l_i, acc
