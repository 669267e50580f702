"""The compiled CPU kernels against the PyTorch reference: decode attention
(kernels/cpu/decode_attention.c: GQA groups, page sizes, sliding windows, lengths that end
mid-page, scattered pages), RMSNorm with and without the residual add, SiLU * up (norm_act.c),
RoPE on views of a fused QKV (rope.c), KV vectors to int8 and back (kv_int8.c), the int8 and the
int4 GEMVs (int8_gemv.c, int4_gemv.c)."""

from __future__ import annotations

import pytest
import torch

from kernels import backend_for, cpu_ext, reference

pytestmark = pytest.mark.skipif(not cpu_ext.available(), reason="no C compiler to build the CPU kernels")
NO_GEMV = pytest.mark.skipif(not cpu_ext.gemv_available(), reason="no AVX2 build of the small-batch kernels")


@pytest.mark.parametrize(
    ("num_heads", "num_kv_heads", "head_dim", "page_size", "window"),
    [
        (9, 3, 64, 16, None), (4, 4, 32, 8, None), (8, 1, 16, 4, None), (6, 2, 64, 16, 21), (2, 2, 8, 1, 3),
        (8, 2, 128, 16, None), (5, 5, 40, 4, None), (3, 1, 12, 4, 7),
    ],  # AVX2 path: head_dim % 8 == 0, output in registers for groups <= 4; 40: a short last block; 12: scalar
)  # fmt: skip
def test_compiled_decode_attention_equals_the_reference(num_heads, num_kv_heads, head_dim, page_size, window):
    g = torch.Generator().manual_seed(num_heads * 100 + page_size)
    num_pages = 96
    cache = torch.randn(2, 2, num_kv_heads, num_pages, page_size, head_dim, generator=g)  # [layers, k/v, ...]
    k_cache, v_cache = cache[1, 0], cache[1, 1]
    lens = torch.tensor([1, page_size, page_size + 1, 5 * page_size - 1, 37], dtype=torch.int32)
    width = (int(lens.max()) + page_size - 1) // page_size
    tables = torch.stack([torch.randperm(num_pages, generator=g)[:width] for _ in lens]).to(torch.int32)
    q = torch.randn(len(lens), num_heads, head_dim, generator=g)
    expect = reference.paged_decode_attention(q, k_cache, v_cache, tables, lens, head_dim**-0.5, window)
    got = cpu_ext.compiled_paged_decode_attention(q, k_cache, v_cache, tables, lens, head_dim**-0.5, window)
    torch.testing.assert_close(got, expect, rtol=1e-5, atol=1e-5)


def test_compiled_decode_attention_keeps_a_nan_a_nan():
    """A NaN in the KV must not be softened into a finite output (the exponential's clamp)."""
    cache = torch.randn(2, 2, 8, 8, 64)
    cache[0, 0, 0, 3, 2] = float("nan")  # K of KV head 0, page 0, token 3: sequence 0 attends to it
    q = torch.randn(2, 4, 64)
    tables, lens = torch.tensor([[0, 1], [2, 3]], dtype=torch.int32), torch.tensor([9, 16], dtype=torch.int32)
    got = cpu_ext.compiled_paged_decode_attention(q, cache[0], cache[1], tables, lens, 0.125)
    expect = reference.paged_decode_attention(q, cache[0], cache[1], tables, lens, 0.125)
    assert got[0, :2].isnan().all() and expect[0, :2].isnan().all()  # query heads 0, 1 read KV head 0
    torch.testing.assert_close(got[0, 2:], expect[0, 2:], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got[1], expect[1], rtol=1e-5, atol=1e-5)


def test_the_cpu_backend_uses_it_and_falls_back_where_it_does_not_apply():
    assert backend_for("cpu").paged_decode_attention is cpu_ext.paged_decode_attention
    q, cache = torch.randn(2, 4, 8, dtype=torch.float64), torch.randn(2, 6, 4, 8, dtype=torch.float64)
    tables, lens = torch.tensor([[0, 1], [2, 3]], dtype=torch.int32), torch.tensor([5, 8], dtype=torch.int32)
    assert cpu_ext.compiled_paged_decode_attention(q, cache, cache, tables, lens, 0.3) is None  # float64
    torch.testing.assert_close(
        cpu_ext.paged_decode_attention(q, cache, cache, tables, lens, 0.3),
        reference.paged_decode_attention(q, cache, cache, tables, lens, 0.3),
    )


@pytest.mark.parametrize("rows", [1, 7, 300])  # 300 x 576 takes the threaded path
@pytest.mark.parametrize("with_residual", [False, True])
def test_compiled_rms_norm_equals_the_reference(rows, with_residual):
    g = torch.Generator().manual_seed(rows)
    x, weight = torch.randn(rows, 576, generator=g) * 3, torch.rand(576, generator=g) + 0.5
    residual = torch.randn(rows, 576, generator=g) if with_residual else None
    expect, expect_residual = reference.rms_norm(x, weight, 1e-5, residual)
    got, got_residual = cpu_ext.rms_norm(x, weight, 1e-5, residual)
    torch.testing.assert_close(got, expect, rtol=1e-5, atol=1e-6)
    assert torch.equal(got_residual, expect_residual)  # one float add each: the same bits
    if residual is None:
        assert got_residual is x


@pytest.mark.parametrize("shape", [(1, 2 * 1536), (33, 2 * 1536), (4, 5, 2 * 8)])
def test_compiled_silu_and_mul_equals_the_reference(shape):
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(len(shape))) * 4
    torch.testing.assert_close(cpu_ext.silu_and_mul(x), reference.silu_and_mul(x), rtol=1e-5, atol=1e-6)


def test_compiled_silu_and_mul_at_the_edges_of_its_exponential():
    """Gates where exp(-|g|) underflows or is exact, signed zeros, infinities and NaN, in the
    vector lanes (the first 16) and the scalar tail."""
    edges = [0.0, -0.0, 1e-30, -1e-30, 30.0, -30.0, 87.0, -87.0, 100.0, -100.0, float("inf"), float("nan")]
    gate = torch.tensor(edges + [0.5, -0.5, 2.0, -2.0] + edges[:3])
    x = torch.cat([gate, torch.linspace(-3, 3, len(gate))]).view(1, -1)
    torch.testing.assert_close(
        cpu_ext.silu_and_mul(x), reference.silu_and_mul(x), rtol=1e-5, atol=1e-30, equal_nan=True
    )


def test_norm_and_activation_fall_back_to_the_reference_where_they_do_not_apply():
    backend = backend_for("cpu")
    assert (backend.rms_norm, backend.silu_and_mul) == (cpu_ext.rms_norm, cpu_ext.silu_and_mul)
    x, weight = torch.randn(3, 16, dtype=torch.float64), torch.rand(16, dtype=torch.float64)
    for got, expect in zip(cpu_ext.rms_norm(x, weight, 1e-6, x), reference.rms_norm(x, weight, 1e-6, x)):
        assert got.dtype == torch.float64
        torch.testing.assert_close(got, expect)
    strided = torch.randn(16, 3).t()  # not contiguous: made so
    torch.testing.assert_close(cpu_ext.silu_and_mul(strided), reference.silu_and_mul(strided))


@pytest.mark.parametrize(
    "shape", [(2, 2, 3, 4, 16, 64), (600, 8, 64), (3, 5, 300), (4, 1)]
)  # 4800 rows: threaded
def test_compiled_kv_int8_codes_are_the_references_bit_for_bit(shape):
    g = torch.Generator().manual_seed(shape[0])
    x = torch.randn(*shape, generator=g) * torch.rand(*shape[:-1], 1, generator=g) * 20
    x[0, ..., :] = 0  # zero vectors (scale 0)
    rows = x.view(-1, shape[-1])
    if shape[-1] > 1:  # a value halfway between two codes (round half to even in both)
        rows[1, 0] = rows[1, 1:].abs().max() / 127 * 63.5
    encoded = cpu_ext.kv_int8_encode(x)
    assert torch.equal(encoded, reference.kv_int8_encode(x))
    assert torch.equal(cpu_ext.kv_int8_decode(encoded), reference.kv_int8_decode(encoded))
    # non-finite input decodes to NaN in both, never to a plausible value
    rows[-1, -1] = float("nan")
    for codec in (cpu_ext, reference):
        assert codec.kv_int8_decode(codec.kv_int8_encode(x)).view(-1, shape[-1])[-1].isnan().all()


def test_kv_int8_falls_back_to_the_reference_where_it_does_not_apply():
    backend = backend_for("cpu")
    assert (backend.kv_int8_encode, backend.kv_int8_decode) == (
        cpu_ext.kv_int8_encode,
        cpu_ext.kv_int8_decode,
    )
    x = torch.randn(3, 8, 16, dtype=torch.float64)
    assert torch.equal(cpu_ext.kv_int8_encode(x), reference.kv_int8_encode(x))
    strided = reference.kv_int8_encode(torch.randn(8, 3, 16)).transpose(0, 1)  # not contiguous: made so
    assert torch.equal(cpu_ext.kv_int8_decode(strided), reference.kv_int8_decode(strided))


@pytest.mark.parametrize("tokens", [1, 5, 300])  # 300 x 9 heads takes the threaded path
def test_compiled_rope_equals_the_reference_bit_for_bit_on_views_of_a_fused_qkv(tokens):
    g = torch.Generator().manual_seed(tokens)
    q, k, _ = torch.randn(tokens, 9 * 64 + 2 * 3 * 64, generator=g).split([9 * 64, 3 * 64, 3 * 64], dim=-1)
    q, k = q.view(tokens, 9, 64), k.view(tokens, 3, 64)  # strided: a row of the fused output apart
    positions = torch.randint(0, 512, (tokens,), generator=g)
    angles = torch.outer(torch.arange(512.0), 1.0 / 10000 ** (torch.arange(0, 64, 2) / 64)).repeat(1, 2)
    cos, sin = angles.cos(), angles.sin()
    for got, expect in zip(
        cpu_ext.rope(q, k, positions, cos, sin), reference.rope(q, k, positions, cos, sin)
    ):
        assert got.is_contiguous() and torch.equal(got, expect)


def test_rope_falls_back_to_the_reference_where_it_does_not_apply():
    assert backend_for("cpu").rope is cpu_ext.rope
    cos, sin = torch.rand(8, 4), torch.rand(8, 4)
    q, k, positions = (
        torch.randn(2, 3, 4, dtype=torch.float64),
        torch.randn(2, 1, 4, dtype=torch.float64),
        torch.tensor([1, 5]),
    )
    for got, expect in zip(
        cpu_ext.rope(q, k, positions, cos, sin), reference.rope(q, k, positions, cos, sin)
    ):
        assert got.dtype == torch.float64 and torch.equal(got, expect)
    strided = torch.randn(2, 3, 8)[..., ::2]  # elements of a row not adjacent
    for got, expect in zip(
        cpu_ext.rope(strided, strided, positions, cos, sin),
        reference.rope(strided, strided, positions, cos, sin),
    ):
        assert torch.equal(got, expect)


@pytest.mark.parametrize("num_tokens", [1, 48, 300])
def test_compiled_write_kv_equals_the_reference(num_tokens):
    """K and V as the model hands them over (v a view into the fused qkv output), slots anywhere
    in the cache; every other slot is left as it was."""
    g = torch.Generator().manual_seed(num_tokens)
    num_kv_heads, num_pages, page_size, head_dim = 3, 40, 16, 64
    qkv = torch.randn(num_tokens, (9 + 2 * num_kv_heads) * head_dim, generator=g)
    _, k, v = qkv.split([9 * head_dim, num_kv_heads * head_dim, num_kv_heads * head_dim], dim=-1)
    k = k.contiguous().view(num_tokens, num_kv_heads, head_dim)
    v = v.reshape(num_tokens, num_kv_heads, head_dim)  # strided: rows of qkv
    slots = torch.randperm(num_pages * page_size, generator=g)[:num_tokens]
    slots[num_tokens // 2] = -1  # padding: written by neither
    got = torch.randn(2, num_kv_heads, num_pages, page_size, head_dim, generator=g)
    expect = got.clone()
    cpu_ext.write_kv(k, v, got[0], got[1], slots)
    reference.write_kv(k, v, expect[0], expect[1], slots)
    assert torch.equal(got, expect)
    assert backend_for("cpu").write_kv is cpu_ext.write_kv


def test_compiled_write_kv_refuses_a_slot_past_the_cache():
    cache = torch.zeros(2, 2, 4, 8, 16)
    k = torch.ones(3, 2, 16)
    with pytest.raises(IndexError, match="slot 32 of token 1 is past the cache's 32 slots"):
        cpu_ext.write_kv(k, k, cache[0], cache[1], torch.tensor([5, 32, 0]))
    assert torch.count_nonzero(cache[:, :, 0, 5]) == 2 * 2 * 16  # token 0 went in before the bad one
    assert torch.count_nonzero(cache) == 2 * 2 * 16


@NO_GEMV
@pytest.mark.parametrize(
    ("groups", "n", "group", "rows"),
    [(1, 960, 576, 1), (1, 576, 1536, 3), (18, 1000, 32, 8), (3, 5, 8, 2), (2, 37, 40, 5), (1, 64, 576, 8)],
)  # per-channel, the int8 LM head's groups of 32, fewer rows than a block, rows left over per thread
def test_compiled_int8_gemv_equals_the_product_in_float64(groups, n, group, rows):
    g = torch.Generator().manual_seed(n)
    codes = torch.randint(-127, 128, (groups, n, group), dtype=torch.int8, generator=g)
    scales = (torch.rand(groups, n, generator=g) / 50).to(torch.bfloat16)
    x = torch.randn(rows, groups * group, generator=g)
    weight = (codes.double() * scales.double()[..., None]).permute(1, 0, 2).reshape(n, groups * group)
    expect = x.double() @ weight.T
    got = cpu_ext.int8_gemv(x, codes, scales)
    assert got.shape == (rows, n) and got.dtype == torch.float32
    torch.testing.assert_close(got.double(), expect, rtol=1e-5, atol=1e-5 * float(expect.abs().max()))
    for i in range(rows):  # a row's result does not depend on the rows beside it
        assert torch.equal(got[i : i + 1], cpu_ext.int8_gemv(x[i : i + 1], codes, scales))


@NO_GEMV
def test_compiled_int8_gemv_declines_what_it_does_not_take():
    codes, scales = torch.zeros(1, 16, 24, dtype=torch.int8), torch.ones(1, 16, dtype=torch.bfloat16)
    assert cpu_ext.int8_gemv(torch.ones(1, 24), codes, scales) is not None
    assert cpu_ext.int8_gemv(torch.ones(8, 24), codes, scales) is not None
    assert cpu_ext.int8_gemv(torch.ones(9, 24), codes, scales) is None  # nine rows: the packed kernel
    assert cpu_ext.int8_gemv(torch.ones(1, 24, dtype=torch.bfloat16), codes, scales) is None
    assert cpu_ext.int8_gemv(torch.ones(1, 24), codes, scales.float()) is None
    odd = torch.zeros(1, 16, 12, dtype=torch.int8)  # a group that is not a multiple of 8
    assert cpu_ext.int8_gemv(torch.ones(1, 12), odd, scales) is None


def _int4_weight(n: int, k: int, seed: int):
    from engine.quant import quantize_int4

    g = torch.Generator().manual_seed(seed)
    return quantize_int4(torch.randn(n, k, generator=g) / 20, dtype=torch.bfloat16), g


@NO_GEMV
@pytest.mark.parametrize(
    ("n", "k", "rows"),
    [(576, 576, 1), (48, 1536, 3), (5, 64, 8), (37, 256, 2), (3072, 576, 1), (40, 576, 8), (16, 2304, 8)],
)  # 18 groups: two blocks of 8 and a tail pair; 48: six blocks; 2: a pair only; 8: one block;
# 8 x 2304 inputs: more than the stack holds, the scratch is allocated
def test_compiled_int4_gemv_equals_its_reference_and_the_rounding_bound(n, k, rows):
    weight, g = _int4_weight(n, k, n + k)
    x = torch.randn(rows, k, generator=g)
    x[0, 32:64] = 0  # a group of zeros: its scale is 0, nothing divides by it
    x[-1, :32] *= 1000  # and one far larger than the rest
    packed = cpu_ext.int4_gemv_pack(weight.codes, weight.scales_zeros)
    got = cpu_ext.int4_gemv(x, packed)
    assert got.shape == (rows, n) and got.dtype == torch.float32
    scale, zero = (t.double().T[..., None] for t in weight.scales_zeros.unbind(-1))  # [n, groups, 1]
    w = ((weight.codes.double().view(n, -1, 32) - 8) * scale + zero).view(n, k)
    for i in range(rows):
        ref = reference.int4_gemv(x[i : i + 1], weight.codes, weight.scales_zeros)
        # float32 sums: their rounding scales with the terms' magnitudes, not with the result's
        magnitude = float((x[i].double().abs() @ w.abs().T).max())
        torch.testing.assert_close(got[i : i + 1].double(), ref, rtol=1e-5, atol=1e-6 * magnitude)
        # a row's result does not depend on the rows beside it
        assert torch.equal(got[i : i + 1], cpu_ext.int4_gemv(x[i : i + 1], packed))
        # against the exact product: rounding x to dx * q moves each input by at most dx / 2 (plus
        # float32's rounding of x / dx, ~32512 * 2^-24 of a step: 0.51 covers it), and each
        # group's codes (<= 15) weigh that by its scale
        exact = x[i : i + 1].double() @ w.T
        dx = x[i].double().view(-1, 32).abs().amax(-1) / reference.INT4_GEMV_LEVELS
        bound = (scale[..., 0].abs() * dx * 15 * 32 * 0.51).sum(-1)
        assert bool(((ref - exact).abs()[0] <= bound + 1e-9).all())
        assert float((ref - exact).abs().max()) > 0  # the activations were rounded: not the float product


@NO_GEMV
def test_compiled_int4_gemv_declines_what_it_does_not_take():
    weight, _ = _int4_weight(16, 64, 0)
    packed = cpu_ext.int4_gemv_pack(weight.codes, weight.scales_zeros)
    assert cpu_ext.int4_gemv(torch.ones(1, 64), packed) is not None
    assert cpu_ext.int4_gemv(torch.ones(8, 64), packed) is not None
    assert cpu_ext.int4_gemv(torch.ones(9, 64), packed) is None  # nine rows: the packed kernel
    assert cpu_ext.int4_gemv(torch.ones(1, 64, dtype=torch.bfloat16), packed) is None
    odd, _ = _int4_weight(16, 96, 0)  # three groups: the pairs do not come out even
    assert cpu_ext.int4_gemv_pack(odd.codes, odd.scales_zeros) is None
    assert cpu_ext.int4_gemv_pack(weight.codes, weight.scales_zeros.float()) is None


@NO_GEMV
def test_int4_linear_decodes_a_few_rows_with_the_int4_gemv():
    from engine.quant import Int4Linear, small_batch_kernels

    weight, g = _int4_weight(48, 128, 1)
    module = Int4Linear(weight, None, packed=True)
    x, nine = torch.randn(2, 4, 128, generator=g), torch.randn(9, 128, generator=g)
    with small_batch_kernels():  # within a decode-only step
        got, nine_in_step = module(x).view(8, 48), module(nine)
    for i, row in enumerate(x.view(8, 128)):  # 8 rows: the int4 GEMV
        expect = reference.int4_gemv(row[None], weight.codes, weight.scales_zeros)
        torch.testing.assert_close(got[i : i + 1].double(), expect, rtol=1e-5, atol=1e-5)
    # 9 rows in a decode step, and any rows outside one (a prompt): the packed kernel, bf16 inputs
    bf16 = nine.bfloat16().float() @ weight.dequantize().float().T
    assert torch.equal(nine_in_step, module(nine))
    torch.testing.assert_close(nine_in_step, bf16, rtol=2e-2, atol=2e-2)
    outside = module(x).view(8, 48)
    assert not torch.equal(outside, got)  # not the GEMV's rounding
    torch.testing.assert_close(
        outside, x.view(8, 128).bfloat16().float() @ weight.dequantize().float().T, rtol=2e-2, atol=2e-2
    )
