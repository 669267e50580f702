"""Triton paged decode / prefill attention against the PyTorch references, over randomized shapes.

Without CUDA the kernels run under ``TRITON_INTERPRET=1`` on CPU tensors (set before the kernel
modules are imported: ``@triton.jit`` reads it); with CUDA they are compiled and run on the GPU.
Shapes stay small: the interpreter is slow.
"""

from __future__ import annotations

import os
import random

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
DEVICE = "cpu" if os.environ.get("TRITON_INTERPRET") == "1" else "cuda"

from kernels import reference, triton_ops  # noqa: E402
from kernels.triton import decode_attention, prefill_attention  # noqa: E402

DTYPES = [torch.float32, torch.float16]
TOL = {torch.float32: dict(atol=2e-5, rtol=1e-4), torch.float16: dict(atol=4e-3, rtol=1e-2)}


def _paged_cache(rng, gen, dtype, num_kv_heads, head_dim, page_size, lens):
    """A two-layer kv_cache (layer 1 used) and block tables whose pages are shuffled across the pool."""
    batch = len(lens)
    max_pages = -(-max(lens) // page_size) + rng.randint(0, 2)  # spare rows hold any valid page id
    num_pages = batch * max_pages + rng.randint(0, 3)
    kv_cache = torch.randn(2, 2, num_kv_heads, num_pages, page_size, head_dim, generator=gen).to(dtype)
    pages = torch.randperm(num_pages, generator=gen)[: batch * max_pages]
    block_tables = pages.view(batch, max_pages).to(torch.int32)
    return kv_cache.to(DEVICE), block_tables.to(DEVICE)


def _query(gen, dtype, rows, num_heads, head_dim, strided):
    if strided:  # a view, as when q is sliced out of a fused qkv projection
        return torch.randn(rows, num_heads + 2, head_dim, generator=gen).to(dtype).to(DEVICE)[:, 1:-1]
    return torch.randn(rows, num_heads, head_dim, generator=gen).to(dtype).to(DEVICE)


def _decode_case(seed, dtype):
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    num_kv_heads, group = rng.choice([1, 2, 3]), rng.choice([1, 2, 4, 5])
    head_dim, page_size = rng.choice([8, 16, 24, 32, 64]), rng.choice([1, 3, 4, 8, 16])
    lens = [rng.randint(1, 48) for _ in range(rng.randint(1, 4))]
    kv_cache, block_tables = _paged_cache(rng, gen, dtype, num_kv_heads, head_dim, page_size, lens)
    q = _query(gen, dtype, len(lens), num_kv_heads * group, head_dim, strided=rng.random() < 0.5)
    context_lens = torch.tensor(lens, device=DEVICE)
    return rng, q, kv_cache[1, 0], kv_cache[1, 1], block_tables, context_lens, head_dim**-0.5


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("dtype", DTYPES)
def test_decode_matches_reference_over_splits_and_windows(seed, dtype):
    rng, q, k_cache, v_cache, block_tables, context_lens, scale = _decode_case(seed, dtype)
    for window in (None, rng.randint(1, 24)):
        expected = reference.paged_decode_attention(
            q, k_cache, v_cache, block_tables, context_lens, scale, window
        )
        for num_splits in (1, rng.choice([2, 3, 7])):
            out = decode_attention.paged_decode_attention(
                q,
                k_cache,
                v_cache,
                block_tables,
                context_lens,
                scale,
                window,
                num_splits=num_splits,
                block_n=rng.choice([16, 32]),
            )
            assert out.dtype == q.dtype and out.shape == q.shape
            torch.testing.assert_close(
                out, expected, **TOL[dtype], msg=f"window={window} splits={num_splits}"
            )


@pytest.mark.parametrize("dtype", DTYPES)
def test_decode_public_entry_uses_default_launch(dtype):
    _, q, k_cache, v_cache, block_tables, context_lens, scale = _decode_case(100, dtype)
    expected = reference.paged_decode_attention(q, k_cache, v_cache, block_tables, context_lens, scale)
    out = triton_ops.paged_decode_attention(q, k_cache, v_cache, block_tables, context_lens, scale)
    torch.testing.assert_close(out, expected, **TOL[dtype])


def _prefill_case(seed, dtype):
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    num_kv_heads, group = rng.choice([1, 2]), rng.choice([1, 2, 3])
    head_dim, page_size = rng.choice([16, 24, 32, 64]), rng.choice([1, 4, 5, 16])
    batch = rng.randint(1, 3)
    q_lens = [rng.randint(1, 40) for _ in range(batch)]
    # Some sequences start fresh, others extend a cached prefix (chunked prefill / prefix reuse).
    ctx = [q_len + rng.choice([0, rng.randint(1, 30)]) for q_len in q_lens]
    kv_cache, block_tables = _paged_cache(rng, gen, dtype, num_kv_heads, head_dim, page_size, ctx)
    q = _query(gen, dtype, sum(q_lens), num_kv_heads * group, head_dim, strided=rng.random() < 0.5)
    cu_seqlens = torch.tensor([0, *torch.tensor(q_lens).cumsum(0).tolist()], device=DEVICE)
    context_lens = torch.tensor(ctx, device=DEVICE)
    return rng, q, kv_cache[1, 0], kv_cache[1, 1], block_tables, cu_seqlens, context_lens, head_dim**-0.5


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("dtype", DTYPES)
def test_prefill_matches_reference_over_ragged_batches(seed, dtype):
    rng, q, k_cache, v_cache, block_tables, cu, context_lens, scale = _prefill_case(seed, dtype)
    for window in (None, rng.randint(1, 24)):
        expected = reference.prefill_attention(
            q, k_cache, v_cache, block_tables, cu, context_lens, scale, window
        )
        out = prefill_attention.prefill_attention(
            q,
            k_cache,
            v_cache,
            block_tables,
            cu,
            context_lens,
            scale,
            window,
            block_m=rng.choice([16, 32]),
            block_n=rng.choice([16, 32]),
        )
        assert out.dtype == q.dtype and out.shape == q.shape
        torch.testing.assert_close(out, expected, **TOL[dtype], msg=f"window={window}")


@pytest.mark.parametrize("dtype", DTYPES)
def test_prefill_public_entry_uses_default_tiles(dtype):
    _, q, k_cache, v_cache, block_tables, cu, context_lens, scale = _prefill_case(100, dtype)
    expected = reference.prefill_attention(q, k_cache, v_cache, block_tables, cu, context_lens, scale)
    out = triton_ops.prefill_attention(q, k_cache, v_cache, block_tables, cu, context_lens, scale)
    torch.testing.assert_close(out, expected, **TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("num_heads,num_kv_heads,head_dim", [(9, 3, 64), (8, 2, 128)])
def test_model_head_shapes(num_heads, num_kv_heads, head_dim, dtype):
    """The head layouts of the engine's models (SmolLM2: 9/3 x 64; Llama / Qwen2: GQA x 128)."""
    rng = random.Random(head_dim)
    gen = torch.Generator().manual_seed(head_dim)
    q_lens, ctx = [5, 17], [21, 17]
    kv_cache, block_tables = _paged_cache(rng, gen, dtype, num_kv_heads, head_dim, 16, ctx)
    k_cache, v_cache = kv_cache[0, 0], kv_cache[0, 1]
    q = _query(gen, dtype, sum(q_lens), num_heads, head_dim, strided=False)
    cu = torch.tensor([0, 5, 22], device=DEVICE)
    context_lens = torch.tensor(ctx, device=DEVICE)
    scale = head_dim**-0.5
    expected = reference.prefill_attention(q, k_cache, v_cache, block_tables, cu, context_lens, scale)
    out = triton_ops.prefill_attention(q, k_cache, v_cache, block_tables, cu, context_lens, scale)
    torch.testing.assert_close(out, expected, **TOL[dtype])
    q = q[cu[1:] - 1]  # each sequence's last token, decoding
    expected = reference.paged_decode_attention(q, k_cache, v_cache, block_tables, context_lens, scale)
    out = decode_attention.paged_decode_attention(
        q, k_cache, v_cache, block_tables, context_lens, scale, num_splits=2, block_n=16
    )
    torch.testing.assert_close(out, expected, **TOL[dtype])


def test_prefill_of_the_last_token_equals_decode():
    """A one-token prefill over a cached prefix is a decode step: both kernels must agree."""
    _, q, k_cache, v_cache, block_tables, context_lens, scale = _decode_case(7, torch.float32)
    cu = torch.arange(q.shape[0] + 1, device=DEVICE)
    decode = triton_ops.paged_decode_attention(q, k_cache, v_cache, block_tables, context_lens, scale)
    prefill = triton_ops.prefill_attention(q, k_cache, v_cache, block_tables, cu, context_lens, scale)
    torch.testing.assert_close(prefill, decode, **TOL[torch.float32])


def test_attention_launchers_reject_misuse():
    _, q, k_cache, v_cache, block_tables, context_lens, scale = _decode_case(3, torch.float32)
    cache = torch.zeros(2, 4, 4, 16, device=DEVICE)
    with pytest.raises(ValueError, match="multiple of num_kv_heads"):
        triton_ops.paged_decode_attention(
            torch.zeros(1, 3, 16, device=DEVICE), cache, cache, block_tables[:1], context_lens[:1], scale
        )
    with pytest.raises(ValueError, match="one dtype"):
        triton_ops.paged_decode_attention(q.half(), k_cache, v_cache, block_tables, context_lens, scale)
    with pytest.raises(ValueError, match="int32 or int64"):
        triton_ops.paged_decode_attention(q, k_cache, v_cache, block_tables.float(), context_lens, scale)
    with pytest.raises(ValueError, match="sliding_window"):
        triton_ops.paged_decode_attention(q, k_cache, v_cache, block_tables, context_lens, scale, 0)
    with pytest.raises(ValueError, match="cu_seqlens_q"):
        triton_ops.prefill_attention(q, k_cache, v_cache, block_tables, context_lens, context_lens, scale)
