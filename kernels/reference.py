"""PyTorch implementations of the hot operations: the CPU path and the references Triton must match.

KV cache layout (one tensor for the whole model, allocated by the engine):

    kv_cache: [num_layers, 2, num_kv_heads, num_pages, page_size, head_dim]

so a layer's K (or V) is ``kv_cache[layer, 0]`` with shape ``[num_kv_heads, num_pages, page_size,
head_dim]``. Heads are outermost so that gathering a sequence's pages yields, per head, one
contiguous ``[tokens, head_dim]`` matrix that batched matmuls consume without another copy. A *slot*
is ``page * page_size + offset``. Block tables are int32 ``[batch, max_pages]`` page ids; rows past a
sequence's last page hold any valid page id (they are masked out by ``context_lens``).

Everything here is batched tensor code: no Python loop runs per token or per head.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def rms_norm(
    x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """RMSNorm, optionally after adding ``residual``. Returns ``(normed, new_residual)``.

    ``new_residual`` is ``x + residual`` (or ``x`` itself): the input of the next residual add.
    The variance is taken in float32, as in the reference Llama implementation.
    """
    if residual is not None:
        x = x + residual
    dtype = x.dtype
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(dtype), x


def rope(
    q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotary embedding, rotate-half (NeoX) convention.

    q: [T, Hq, D], k: [T, Hk, D], positions: [T] int64, cos / sin: [max_positions, D] tables.
    Returns rotated (q, k) as new tensors.
    """
    c = cos[positions].unsqueeze(1).to(q.dtype)
    s = sin[positions].unsqueeze(1).to(q.dtype)
    return q * c + _rotate_half(q) * s, k * c + _rotate_half(k) * s


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    """x: [T, 2I] holding ``[gate | up]`` → ``silu(gate) * up``: [T, I]."""
    gate, up = x.chunk(2, dim=-1)
    return F.silu(gate) * up


def write_kv(
    k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, slots: torch.Tensor
) -> None:
    """Store new K/V rows into their slots. k, v: [T, Hk, D]; caches: [Hk, P, page, D]; slots: [T].
    A negative slot is padding: its row is not written (as in the compiled and Triton kernels)."""
    num_kv_heads, _, _, head_dim = k_cache.shape
    if slots.numel() and bool((slots < 0).any()):
        keep = slots >= 0
        k, v, slots = k[keep], v[keep], slots[keep]
    k_cache.view(num_kv_heads, -1, head_dim)[:, slots] = k.transpose(0, 1)
    v_cache.view(num_kv_heads, -1, head_dim)[:, slots] = v.transpose(0, 1)


def gather_kv(cache: torch.Tensor, block_table: torch.Tensor) -> torch.Tensor:
    """Pages of a batch of sequences: cache [Hk, P, page, D], block_table [B, n] → [Hk, B, n*page, D]."""
    num_kv_heads, _, page_size, head_dim = cache.shape
    batch, num_pages = block_table.shape
    pages = cache.index_select(1, block_table.reshape(-1).long())
    return pages.view(num_kv_heads, batch, num_pages * page_size, head_dim)


def paged_decode_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    context_lens: torch.Tensor,
    scale: float,
    sliding_window: int | None = None,
) -> torch.Tensor:
    """One query token per sequence against its paged KV (GQA/MQA).

    q: [B, Hq, D]; caches: [Hk, P, page, D]; block_tables: [B, n]; context_lens: [B] (tokens of KV,
    the query's own included). Returns [B, Hq, D].
    """
    batch = q.shape[0]
    if batch >= 2 * _DECODE_GROUP_MIN and q.device.type == "cpu":
        # Every sequence is padded to the longest one's pages: with lengths far apart most of
        # the gathered KV is padding. Sorted into groups of similar length, each group gathers
        # only up to its own longest (the results do not depend on the grouping).
        lens = context_lens.tolist()
        order = sorted(range(batch), key=lens.__getitem__)
        groups = _length_groups([lens[i] for i in order])
        if len(groups) > 1:
            out = torch.empty_like(q)
            for start, stop in groups:
                rows = torch.tensor(order[start:stop], device=q.device)
                out[rows] = _paged_decode_attention(
                    q[rows], k_cache, v_cache, block_tables[rows], context_lens[rows], scale, sliding_window
                )
            return out
    return _paged_decode_attention(q, k_cache, v_cache, block_tables, context_lens, scale, sliding_window)


_DECODE_GROUP_MIN = 8  # sequences per length group at the least (fewer: the per-call overhead wins)
_DECODE_SPLIT_GAIN = 0.15  # split a group where that saves this share of its padded work


def _length_groups(sorted_lens: list[int], start: int = 0, stop: int | None = None) -> list[tuple[int, int]]:
    """Split ascending lengths into runs ``[start, stop)``, recursively, wherever a split cuts the
    padded work (a run's size x its longest length) by at least ``_DECODE_SPLIT_GAIN``."""
    stop = len(sorted_lens) if stop is None else stop
    if stop - start < 2 * _DECODE_GROUP_MIN:
        return [(start, stop)]

    def work(a: int, b: int) -> int:
        return (b - a) * sorted_lens[b - 1]

    cut = min(
        range(start + _DECODE_GROUP_MIN, stop - _DECODE_GROUP_MIN + 1),
        key=lambda c: work(start, c) + work(c, stop),
    )
    if work(start, cut) + work(cut, stop) > (1 - _DECODE_SPLIT_GAIN) * work(start, stop):
        return [(start, stop)]
    return _length_groups(sorted_lens, start, cut) + _length_groups(sorted_lens, cut, stop)


def _paged_decode_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    context_lens: torch.Tensor,
    scale: float,
    sliding_window: int | None,
) -> torch.Tensor:
    batch, num_heads, head_dim = q.shape
    num_kv_heads = k_cache.shape[0]
    group = num_heads // num_kv_heads
    page_size = k_cache.shape[2]
    max_len = int(context_lens.max())
    block_tables = block_tables[:, : (max_len + page_size - 1) // page_size]
    keys = gather_kv(k_cache, block_tables)  # [Hk, B, N, D]
    values = gather_kv(v_cache, block_tables)
    qh = q.view(batch, num_kv_heads, group, head_dim).transpose(0, 1)  # [Hk, B, G, D]
    scores = torch.matmul(qh, keys.transpose(-1, -2)).mul_(scale)  # [Hk, B, G, N]
    idx = torch.arange(keys.shape[2], device=q.device)
    lens = context_lens.to(q.device).view(batch, 1)
    masked = idx.view(1, -1) >= lens
    if sliding_window is not None:
        masked |= idx.view(1, -1) < lens - sliding_window
    scores.masked_fill_(masked.view(1, batch, 1, -1), float("-inf"))
    probs = torch.softmax(scores.float(), dim=-1).to(q.dtype)
    out = torch.matmul(probs, values)  # [Hk, B, G, D]
    return out.transpose(0, 1).reshape(batch, num_heads, head_dim)


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
    """Causal attention of new tokens over their sequence's paged prefix plus themselves.

    q: [T, Hq, D] (the new tokens of all sequences, concatenated); block_tables: [B, n];
    cu_seqlens_q: [B+1] offsets of each sequence's new tokens in q; context_lens: [B] total KV
    tokens per sequence (cached prefix + new). New K/V must already be written to the cache.
    Returns [T, Hq, D]. One fused attention call per sequence: the work is the matmuls, not the loop.
    """
    out = torch.empty_like(q)
    starts = cu_seqlens_q.tolist()
    for i, ctx in enumerate(context_lens.tolist()):
        q_start, q_end = starts[i], starts[i + 1]
        out[q_start:q_end] = _prefill_sequence(
            q[q_start:q_end], k_cache, v_cache, block_tables[i : i + 1], ctx, scale, sliding_window
        )
    return out


def _prefill_sequence(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_table: torch.Tensor,
    ctx: int,
    scale: float,
    sliding_window: int | None,
) -> torch.Tensor:
    """One sequence's new tokens q ``[q_len, Hq, D]`` over its first ``ctx`` cached tokens, paged
    through ``block_table [1, n]``; returns ``[q_len, Hq, D]``."""
    num_kv_heads, _, page_size, _ = k_cache.shape
    pages = block_table[:, : (ctx + page_size - 1) // page_size]
    keys = gather_kv(k_cache, pages)[:, 0, :ctx]  # [Hk, ctx, D]
    values = gather_kv(v_cache, pages)[:, 0, :ctx]
    mask = _causal_mask(q.shape[0], ctx, sliding_window, q.device)
    o = F.scaled_dot_product_attention(
        q.transpose(0, 1).unsqueeze(0),  # [1, Hq, q_len, D]
        keys.unsqueeze(0),
        values.unsqueeze(0),
        attn_mask=mask,
        is_causal=mask is None,
        scale=scale,
        enable_gqa=q.shape[1] != num_kv_heads,
    )
    return o[0].transpose(0, 1)


def _causal_mask(
    q_len: int, ctx: int, sliding_window: int | None, device: torch.device
) -> torch.Tensor | None:
    """Boolean mask (True = attend) for queries at positions ctx-q_len..ctx-1; None = plain causal."""
    if q_len == ctx and (sliding_window is None or sliding_window >= ctx):
        return None
    q_pos = torch.arange(ctx - q_len, ctx, device=device).view(-1, 1)
    k_pos = torch.arange(ctx, device=device).view(1, -1)
    mask = k_pos <= q_pos
    if sliding_window is not None:
        mask &= k_pos > q_pos - sliding_window
    return mask


def pack_pages(kv_cache: torch.Tensor, page_ids: torch.Tensor) -> torch.Tensor:
    """Copy pages out of the cache into one contiguous chunk buffer.

    kv_cache: [L, 2, Hk, P, page, D]; page_ids: [n] → [L, 2, Hk, n, page, D] (layer-major, so a
    receiver can start on layer 0 before the rest arrives).
    """
    return kv_cache.index_select(3, page_ids.long())


def unpack_pages(kv_cache: torch.Tensor, page_ids: torch.Tensor, chunk: torch.Tensor) -> None:
    """Inverse of :func:`pack_pages`: write a chunk buffer into the given pages of the cache."""
    kv_cache.index_copy_(3, page_ids.long(), chunk.to(kv_cache.dtype))


def kv_int8_encode(x: torch.Tensor) -> torch.Tensor:
    """Each vector along the last dimension of ``x`` [..., dim] as int8 codes and its float32 scale's
    bytes [..., dim + 4]: ``scale = max|x| / 127``, ``code = round(x / scale)`` (0 for a zero
    vector), so every value is within half its vector's scale (see ``engine.kv_codec``)."""
    x = x.float()
    dim = x.shape[-1]
    scale = x.abs().amax(dim=-1, keepdim=True) / 127
    codes = torch.round(x / torch.where(scale > 0, scale, 1.0))
    out = torch.empty((*x.shape[:-1], dim + 4), dtype=torch.int8, device=x.device)
    out[..., :dim] = codes.to(torch.int8)
    out[..., dim:] = scale.view(torch.int8)
    return out


def kv_int8_decode(encoded: torch.Tensor) -> torch.Tensor:
    """float32 [..., dim] of what :func:`kv_int8_encode` wrote [..., dim + 4]: code * scale."""
    dim = encoded.shape[-1] - 4
    scale = encoded[..., dim:].contiguous().view(torch.float32)
    return encoded[..., :dim].float() * scale


INT4_GEMV_LEVELS = 127 * 256  # the largest |activation| after rounding, in int4_gemv


def int4_gemv(x: torch.Tensor, codes: torch.Tensor, scales_zeros: torch.Tensor) -> torch.Tensor:
    """What the compiled int4 GEMV computes (``kernels/cpu/int4_gemv.c``), in float64: ``x [1, K]``
    times the int4 weight ``codes`` uint8 [N, K] (0..15) with ``scales_zeros`` [K // 32, N, 2]
    (``w = (code - 8) * scale + zero`` per group of 32 inputs, as ``engine.quant.Int4Weight``), where
    x is rounded per group of 32 to 16-bit integers (``x ~ dx * q``, ``dx = max|x| / LEVELS``,
    ``LEVELS = INT4_GEMV_LEVELS``, ``q`` rounded in float32 as the kernel does) in the product with
    the codes and kept as it is in the zeros' term:

        y[n] = sum_g scale * (dx * sum_k code * q - 8 * xsum) + zero * xsum,  xsum = sum_k x.
    """
    n, k = codes.shape
    xg = x.float().view(k // 32, 32)
    # the rounding as the kernel does it, in float32: x * (LEVELS / amax), to nearest even
    amax = xg.abs().amax(dim=-1, keepdim=True)
    inv = torch.where(amax > 0, torch.tensor(float(INT4_GEMV_LEVELS)) / amax, 0.0)
    q = torch.round(xg * inv).double()
    dx = (amax / INT4_GEMV_LEVELS).double().view(-1)
    dots = (codes.double().view(n, k // 32, 32) * q).sum(-1)  # [N, G]
    xsum = xg.double().sum(-1)
    scale, zero = (t.double().t() for t in scales_zeros.unbind(-1))  # each [N, G]
    out = scale * (dx * dots - 8 * xsum) + zero * xsum
    return out.sum(-1).view(1, n)
