"""The Triton implementations of :data:`kernels.OPS`, picked by :func:`kernels.backend_for` on CUDA.

Every function has exactly the signature and semantics of its namesake in :mod:`kernels.reference`
(which the tests hold them to). Kernels live in :mod:`kernels.triton`, one file per operation
family; they are imported on first call, so importing this module needs neither triton's driver nor
a GPU. The kernels load float32 / float16 / bfloat16 and compute in float32.
"""

from __future__ import annotations

import torch


def rms_norm(
    x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """RMSNorm after an optional residual add; returns ``(normed, new_residual)``."""
    from kernels.triton import norm

    return norm.rms_norm(x, weight, eps, residual)


def rope(
    q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotate-half RoPE of q [T, Hq, D] and k [T, Hk, D] from the [max_positions, D] tables."""
    from kernels.triton import rope as rope_kernels

    return rope_kernels.rope(q, k, positions, cos, sin)


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    """``[..., 2I]`` holding ``[gate | up]`` → ``silu(gate) * up``: ``[..., I]``."""
    from kernels.triton import activation

    return activation.silu_and_mul(x)


def write_kv(
    k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, slots: torch.Tensor
) -> None:
    """Store K/V rows [T, Hk, D] into their slots of one layer's caches [Hk, P, page, D]."""
    from kernels.triton import kv_pages

    kv_pages.write_kv(k, v, k_cache, v_cache, slots)


def paged_decode_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    context_lens: torch.Tensor,
    scale: float,
    sliding_window: int | None = None,
) -> torch.Tensor:
    """One query token per sequence against its paged KV (GQA/MQA); returns [B, Hq, D]."""
    from kernels.triton import decode_attention

    return decode_attention.paged_decode_attention(
        q, k_cache, v_cache, block_tables, context_lens, scale, sliding_window
    )


def prefill_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    context_lens: torch.Tensor,
    scale: float,
    sliding_window: int | None = None,
) -> torch.Tensor:
    """Causal attention of the new tokens [T, Hq, D] over their paged prefix plus themselves."""
    from kernels.triton import prefill_attention as prefill

    return prefill.prefill_attention(
        q, k_cache, v_cache, block_tables, cu_seqlens_q, context_lens, scale, sliding_window
    )


def pack_pages(kv_cache: torch.Tensor, page_ids: torch.Tensor) -> torch.Tensor:
    """Pages of every layer into one contiguous chunk buffer [L, 2, Hk, n, page, D]."""
    from kernels.triton import kv_pages

    return kv_pages.pack_pages(kv_cache, page_ids)


def unpack_pages(kv_cache: torch.Tensor, page_ids: torch.Tensor, chunk: torch.Tensor) -> None:
    """Inverse of :func:`pack_pages`: write a chunk buffer into the given pages."""
    from kernels.triton import kv_pages

    kv_pages.unpack_pages(kv_cache, page_ids, chunk)
