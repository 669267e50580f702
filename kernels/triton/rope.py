"""Rotary embedding (rotate-half / NeoX convention) from cos/sin tables indexed by position.

Scaled RoPE variants (linear, dynamic NTK, Llama 3) differ only in the tables, which the engine
builds; the kernel reads ``cos[pos]`` and ``sin[pos]`` whatever produced them.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.triton.checks import as_index, check_float, check_same_device, check_same_dtype, next_pow2


@triton.jit
def _rotate_heads(
    src_ptr,
    dst_ptr,
    tok,
    tok_stride,
    head_stride,
    num_heads,
    half,
    c1,
    c2,
    s1,
    s2,
    BLOCK_HEADS: tl.constexpr,
    BLOCK_HALF: tl.constexpr,
):
    """Rotate every head of one token: ``[x1 | x2] -> [x1*c1 - x2*s1 | x2*c2 + x1*s2]``."""
    heads = tl.arange(0, BLOCK_HEADS)[:, None]
    cols = tl.arange(0, BLOCK_HALF)[None, :]
    mask = (heads < num_heads) & (cols < half)
    src = src_ptr + tok * tok_stride + heads * head_stride + cols
    x1 = tl.load(src, mask=mask, other=0.0).to(tl.float32)
    x2 = tl.load(src + half, mask=mask, other=0.0).to(tl.float32)
    # dst is contiguous [T, H, D]
    dst = dst_ptr + tok * num_heads * 2 * half + heads * 2 * half + cols
    tl.store(dst, (x1 * c1 - x2 * s1).to(dst_ptr.dtype.element_ty), mask=mask)
    tl.store(dst + half, (x2 * c2 + x1 * s2).to(dst_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _table_halves(table_ptr, pos, table_stride, half, act_ptr, BLOCK_HALF: tl.constexpr):
    """Both halves of table row ``pos`` in float32, rounded first to ``act_ptr``'s element type: the
    reference casts the table rows to the activations' dtype before multiplying."""
    cols = tl.arange(0, BLOCK_HALF)[None, :]
    mask = cols < half
    row = table_ptr + pos * table_stride + cols
    act = act_ptr.dtype.element_ty
    first = tl.load(row, mask=mask, other=0.0).to(act).to(tl.float32)
    second = tl.load(row + half, mask=mask, other=0.0).to(act).to(tl.float32)
    return first, second


@triton.jit
def _rope_kernel(
    q_ptr, k_ptr, q_out_ptr, k_out_ptr, pos_ptr, cos_ptr, sin_ptr,
    q_tok_stride, q_head_stride, k_tok_stride, k_head_stride, table_stride,
    num_q_heads, num_k_heads, half,
    BLOCK_HQ: tl.constexpr, BLOCK_HK: tl.constexpr, BLOCK_HALF: tl.constexpr,
):  # fmt: skip
    tok = tl.program_id(0).to(tl.int64)
    pos = tl.load(pos_ptr + tok).to(tl.int64)
    c1, c2 = _table_halves(cos_ptr, pos, table_stride, half, q_out_ptr, BLOCK_HALF)
    s1, s2 = _table_halves(sin_ptr, pos, table_stride, half, q_out_ptr, BLOCK_HALF)
    _rotate_heads(
        q_ptr, q_out_ptr, tok, q_tok_stride, q_head_stride, num_q_heads, half, c1, c2, s1, s2, BLOCK_HQ, BLOCK_HALF
    )  # fmt: skip
    _rotate_heads(
        k_ptr, k_out_ptr, tok, k_tok_stride, k_head_stride, num_k_heads, half, c1, c2, s1, s2, BLOCK_HK, BLOCK_HALF
    )  # fmt: skip


def _check_rope_args(
    q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
) -> torch.Tensor:
    """Check q ``[T, Hq, D]``, k ``[T, Hk, D]`` and the ``[max_positions, D]`` tables; returns the
    ``[T]`` positions as a contiguous index tensor on q's device."""
    check_float("q", q, 3)
    check_float("k", k, 3)
    check_float("cos", cos, 2)
    check_float("sin", sin, 2)
    check_same_dtype("q and k", q, k)
    check_same_device("q, k, cos and sin", q, k, cos, sin)
    num_tokens, _, head_dim = q.shape
    if k.shape[0] != num_tokens or k.shape[2] != head_dim:
        raise ValueError(f"k {tuple(k.shape)} must be [T={num_tokens}, Hk, D={head_dim}]")
    if head_dim % 2:
        raise ValueError(f"rotate-half RoPE needs an even head_dim, got {head_dim}")
    if cos.shape != sin.shape or cos.shape[1] != head_dim or cos.stride() != sin.stride():
        raise ValueError(
            f"cos {tuple(cos.shape)} and sin {tuple(sin.shape)} must both be [max_positions, {head_dim}]"
        )
    positions = as_index("positions", positions, 1, q.device)
    if positions.shape[0] != num_tokens:
        raise ValueError(f"positions has {positions.shape[0]} entries for {num_tokens} tokens")
    return positions


def rope(
    q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Same contract as :func:`kernels.reference.rope`. Positions must index rows of the tables."""
    positions = _check_rope_args(q, k, positions, cos, sin)
    num_tokens, num_q_heads, head_dim = q.shape
    num_k_heads, half = k.shape[1], head_dim // 2
    q_out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    k_out = torch.empty(k.shape, dtype=k.dtype, device=k.device)
    if num_tokens > 0:
        _rope_kernel[(num_tokens,)](
            q, k, q_out, k_out, positions, cos, sin,
            q.stride(0), q.stride(1), k.stride(0), k.stride(1), cos.stride(0),
            num_q_heads, num_k_heads, half,
            BLOCK_HQ=next_pow2(num_q_heads), BLOCK_HK=next_pow2(num_k_heads), BLOCK_HALF=next_pow2(half),
        )  # fmt: skip
    return q_out, k_out
