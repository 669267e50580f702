"""Triton RMSNorm, RoPE, SiLU·mul, write_kv and pack/unpack_pages against the PyTorch references.

Without CUDA the kernels run under ``TRITON_INTERPRET=1`` on CPU tensors (set before the kernel
modules are imported: ``@triton.jit`` reads it); with CUDA they are compiled and run on the GPU.
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

DTYPES = [torch.float32, torch.float16]
# The interpreter computes bfloat16 wrongly (float32 -> bfloat16 does not round to nearest), but it
# copies bfloat16 bits exactly: the pure data movers are checked in bfloat16 too.
COPY_DTYPES = [*DTYPES, torch.bfloat16]
# fp16 results may differ by an ulp where the kernel rounds once and the reference twice.
TOL = {torch.float32: dict(atol=1e-5, rtol=1e-5), torch.float16: dict(atol=1e-3, rtol=1e-3)}


def _randn(gen, *shape, dtype=torch.float32):
    return torch.randn(*shape, generator=gen).to(dtype).to(DEVICE)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("dtype", DTYPES)
def test_rms_norm(seed, dtype):
    rng, gen = random.Random(seed), torch.Generator().manual_seed(seed)
    hidden = rng.choice([7, 32, 48, 100])
    lead = rng.choice([(rng.randint(1, 6),), (2, rng.randint(1, 3))])
    x = _randn(gen, *lead, hidden + 3, dtype=dtype)[..., 1:-2]  # rows strided, as a view would be
    residual = _randn(gen, *lead, hidden, dtype=dtype)
    for weight_dtype in (dtype, torch.float32):
        weight = _randn(gen, hidden, dtype=weight_dtype)
        out, new_res = triton_ops.rms_norm(x, weight, 1e-6, residual)
        ref_out, ref_res = reference.rms_norm(x, weight, 1e-6, residual)
        assert out.dtype == ref_out.dtype and new_res.dtype == ref_res.dtype
        torch.testing.assert_close(out, ref_out, **TOL[dtype])
        torch.testing.assert_close(new_res, ref_res, atol=0, rtol=0)
        out, new_res = triton_ops.rms_norm(x, weight, 1e-5)
        assert new_res is x
        torch.testing.assert_close(out, reference.rms_norm(x, weight, 1e-5)[0], **TOL[dtype])


def _rope_tables(head_dim, max_positions, base=10000.0):
    inv_freq = 1.0 / base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    freqs = torch.outer(torch.arange(max_positions, dtype=torch.float32), inv_freq)
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos().to(DEVICE), emb.sin().to(DEVICE)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("dtype", DTYPES)
def test_rope_on_views_of_a_fused_qkv(seed, dtype):
    rng, gen = random.Random(seed), torch.Generator().manual_seed(seed)
    num_tokens, num_kv_heads, group = rng.randint(1, 9), rng.choice([1, 2, 3]), rng.choice([1, 3, 4])
    head_dim = rng.choice([8, 24, 64])
    num_heads = num_kv_heads * group
    qkv = _randn(gen, num_tokens, (num_heads + 2 * num_kv_heads) * head_dim, dtype=dtype)
    q = qkv[:, : num_heads * head_dim].view(num_tokens, num_heads, head_dim)
    k = qkv[:, num_heads * head_dim : (num_heads + num_kv_heads) * head_dim].view(
        num_tokens, num_kv_heads, head_dim
    )
    cos, sin = _rope_tables(head_dim, 64)
    if seed == 2:  # scaled variants (linear, llama3) differ only in the tables: any table must work
        cos, sin = _randn(gen, 64, head_dim), _randn(gen, 64, head_dim)
    positions = torch.randperm(64, generator=gen)[:num_tokens].to(DEVICE)
    out_q, out_k = triton_ops.rope(q, k, positions, cos, sin)
    ref_q, ref_k = reference.rope(q, k, positions, cos, sin)
    torch.testing.assert_close(out_q, ref_q, **TOL[dtype])
    torch.testing.assert_close(out_k, ref_k, **TOL[dtype])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(3, 10), (2, 4, 128), (2, 2200)])
def test_silu_and_mul(shape, dtype):
    x = _randn(torch.Generator().manual_seed(0), *shape, dtype=dtype)
    out = triton_ops.silu_and_mul(x)
    assert out.shape == (*shape[:-1], shape[-1] // 2)
    torch.testing.assert_close(out, reference.silu_and_mul(x), **TOL[dtype])


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("dtype", COPY_DTYPES)
def test_write_kv_into_shuffled_slots(seed, dtype):
    rng, gen = random.Random(seed), torch.Generator().manual_seed(seed)
    num_kv_heads, head_dim = rng.choice([1, 2, 3]), rng.choice([8, 24, 64])
    page_size, num_pages = rng.choice([1, 3, 16]), rng.randint(2, 6)
    kv_cache = _randn(gen, 2, 2, num_kv_heads, num_pages, page_size, head_dim, dtype=dtype)
    num_tokens = rng.randint(1, num_pages * page_size)
    slots = torch.randperm(num_pages * page_size, generator=gen)[:num_tokens].to(DEVICE)
    kv = _randn(gen, num_tokens, 2 * num_kv_heads * head_dim + 5, dtype=dtype)  # k and v are views
    k = kv[:, : num_kv_heads * head_dim].view(num_tokens, num_kv_heads, head_dim)
    v = kv[:, num_kv_heads * head_dim : -5].view(num_tokens, num_kv_heads, head_dim)
    expected, actual = kv_cache.clone(), kv_cache.clone()
    reference.write_kv(k, v, expected[1, 0], expected[1, 1], slots)
    triton_ops.write_kv(k, v, actual[1, 0], actual[1, 1], slots)
    torch.testing.assert_close(actual, expected, atol=0, rtol=0)


def test_write_kv_skips_negative_padding_slots():
    gen = torch.Generator().manual_seed(0)
    kv_cache = _randn(gen, 1, 2, 2, 3, 4, 16)
    k, v = _randn(gen, 3, 2, 16), _randn(gen, 3, 2, 16)
    slots = torch.tensor([5, -1, 2], device=DEVICE)
    expected, actual = kv_cache.clone(), kv_cache.clone()
    keep = slots >= 0
    reference.write_kv(k[keep], v[keep], expected[0, 0], expected[0, 1], slots[keep])
    triton_ops.write_kv(k, v, actual[0, 0], actual[0, 1], slots)
    torch.testing.assert_close(actual, expected, atol=0, rtol=0)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("dtype", COPY_DTYPES)
def test_pack_and_unpack_pages_out_of_order(seed, dtype):
    rng, gen = random.Random(seed), torch.Generator().manual_seed(seed)
    num_layers, num_kv_heads = rng.randint(1, 3), rng.choice([1, 2, 3])
    page_size, head_dim, num_pages = rng.choice([1, 3, 16]), rng.choice([8, 24, 64]), rng.randint(3, 8)
    kv_cache = _randn(gen, num_layers, 2, num_kv_heads, num_pages, page_size, head_dim, dtype=dtype)
    page_ids = torch.randperm(num_pages, generator=gen)[: rng.randint(1, num_pages)].to(DEVICE)
    chunk = triton_ops.pack_pages(kv_cache, page_ids)
    assert chunk.is_contiguous()
    torch.testing.assert_close(chunk, reference.pack_pages(kv_cache, page_ids), atol=0, rtol=0)

    # Unpacking converts the chunk to the cache's dtype, as a receiver of float32 bytes would need.
    incoming = _randn(gen, *chunk.shape, dtype=dtype if dtype == torch.bfloat16 else torch.float32)
    expected, actual = kv_cache.clone(), kv_cache.clone()
    reference.unpack_pages(expected, page_ids, incoming)
    triton_ops.unpack_pages(actual, page_ids, incoming)
    torch.testing.assert_close(actual, expected, atol=0, rtol=0)
    torch.testing.assert_close(triton_ops.pack_pages(actual, page_ids), incoming.to(dtype), atol=0, rtol=0)


def test_small_op_launchers_reject_misuse():
    gen = torch.Generator().manual_seed(0)
    x = _randn(gen, 4, 16)
    with pytest.raises(ValueError, match="weight has 8 elements"):
        triton_ops.rms_norm(x, _randn(gen, 8), 1e-6)
    with pytest.raises(ValueError, match="last dimension"):
        triton_ops.rms_norm(x.t(), _randn(gen, 4), 1e-6)
    with pytest.raises(ValueError, match="even"):
        triton_ops.silu_and_mul(_randn(gen, 2, 7))
    q, k = _randn(gen, 3, 2, 16), _randn(gen, 3, 1, 16)
    cos, sin = _rope_tables(16, 8)
    with pytest.raises(ValueError, match="positions has 2 entries"):
        triton_ops.rope(q, k, torch.arange(2, device=DEVICE), cos, sin)
    with pytest.raises(ValueError, match="int32 or int64"):
        triton_ops.rope(q, k, torch.zeros(3, device=DEVICE), cos, sin)
    cache = _randn(gen, 2, 1, 2, 4, 16)
    with pytest.raises(ValueError, match=r"\[T, 1, 16\]"):
        triton_ops.write_kv(q, q, cache[0], cache[1], torch.arange(3, device=DEVICE))
    with pytest.raises(ValueError, match=r"must be \(1, 2, 1, 2, 2, 16\)"):
        triton_ops.unpack_pages(
            torch.zeros(1, 2, 1, 4, 2, 16, device=DEVICE),
            torch.arange(2, device=DEVICE),
            torch.zeros(1, 2, 1, 3, 2, 16, device=DEVICE),
        )
