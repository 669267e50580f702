"""The PyTorch kernels against straightforward dense math (loops over sequences, explicit masks)."""

from __future__ import annotations

import math

import pytest
import torch

from kernels import reference as ops

torch.manual_seed(0)


def dense_attention(q, k, v, scale, q_positions, sliding_window=None):
    """q: [Tq, Hq, D], k/v: [Tk, Hk, D]; query i sits at q_positions[i] and sees keys 0..pos."""
    group = q.shape[1] // k.shape[1]
    k = k.repeat_interleave(group, dim=1)
    v = v.repeat_interleave(group, dim=1)
    scores = torch.einsum("qhd,khd->hqk", q, k) * scale
    kpos = torch.arange(k.shape[0])
    mask = kpos[None, :] <= q_positions[:, None]
    if sliding_window is not None:
        mask &= kpos[None, :] > q_positions[:, None] - sliding_window
    scores = scores.masked_fill(~mask[None], float("-inf"))
    return torch.einsum("hqk,khd->qhd", scores.softmax(-1), v)


def scattered_cache(seqs_kv, num_pages, page_size):
    """Write each sequence's [T, Hk, D] K/V into shuffled pages; return caches and block tables."""
    hk, d = seqs_kv[0][0].shape[1:]
    k_cache = torch.zeros(hk, num_pages, page_size, d)
    v_cache = torch.zeros_like(k_cache)
    free = torch.randperm(num_pages).tolist()
    tables = []
    for k, v in seqs_kv:
        pages = [free.pop() for _ in range(math.ceil(k.shape[0] / page_size))]
        slots = torch.tensor([pages[t // page_size] * page_size + t % page_size for t in range(k.shape[0])])
        ops.write_kv(k, v, k_cache, v_cache, slots)
        tables.append(pages)
    width = max(len(t) for t in tables)
    return k_cache, v_cache, torch.tensor([t + [0] * (width - len(t)) for t in tables], dtype=torch.int32)


@pytest.mark.parametrize(("hq", "hk", "d", "page_size"), [(4, 4, 16, 4), (6, 2, 32, 8), (8, 1, 64, 16)])
@pytest.mark.parametrize("window", [None, 5])
def test_paged_decode_attention(hq, hk, d, page_size, window):
    lens = [1, 7, 33, 16]
    kv = [(torch.randn(n, hk, d), torch.randn(n, hk, d)) for n in lens]
    k_cache, v_cache, tables = scattered_cache(kv, 64, page_size)
    q = torch.randn(len(lens), hq, d)
    out = ops.paged_decode_attention(q, k_cache, v_cache, tables, torch.tensor(lens), 0.3, window)
    for i, (k, v) in enumerate(kv):
        expect = dense_attention(q[i : i + 1], k, v, 0.3, torch.tensor([lens[i] - 1]), window)
        torch.testing.assert_close(out[i : i + 1], expect, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("window", [None, 9])
def test_paged_decode_attention_groups_sequences_by_length(window):
    """A large batch of far-apart lengths runs in length groups: same numbers, bit for bit, as one
    padded batch, and each row still equals dense attention over its own context."""
    from kernels.reference import _length_groups, _paged_decode_attention

    gen = torch.Generator().manual_seed(3)
    lens = [int(n) for n in torch.randint(1, 200, (40,), generator=gen)]
    assert len(_length_groups(sorted(lens))) > 1
    kv = [(torch.randn(n, 2, 16, generator=gen), torch.randn(n, 2, 16, generator=gen)) for n in lens]
    k_cache, v_cache, tables = scattered_cache(kv, 1024, 8)
    q = torch.randn(len(lens), 6, 16, generator=gen)
    context = torch.tensor(lens)
    out = ops.paged_decode_attention(q, k_cache, v_cache, tables, context, 0.25, window)
    assert torch.equal(out, _paged_decode_attention(q, k_cache, v_cache, tables, context, 0.25, window))
    for i in (0, 17, 39):
        expect = dense_attention(q[i : i + 1], *kv[i], 0.25, torch.tensor([lens[i] - 1]), window)
        torch.testing.assert_close(out[i : i + 1], expect, atol=1e-5, rtol=1e-5)


def test_length_groups_split_only_where_padding_is_worth_it():
    from kernels.reference import _length_groups

    assert _length_groups([100] * 64) == [(0, 64)]  # equal lengths: one group
    assert _length_groups(list(range(1, 10))) == [(0, 9)]  # too few to split
    groups = _length_groups([10] * 16 + [1000] * 16)
    assert groups == [(0, 16), (16, 32)]
    spread = _length_groups(sorted(range(32, 1024, 15)))
    assert len(spread) > 2 and spread[0][0] == 0 and spread[-1][1] == len(range(32, 1024, 15))
    assert all(a[1] == b[0] and b[1] - b[0] >= 8 for a, b in zip(spread, spread[1:]))


@pytest.mark.parametrize(("hq", "hk", "d", "page_size"), [(4, 2, 16, 4), (3, 3, 8, 16)])
@pytest.mark.parametrize("window", [None, 6])
def test_prefill_attention_over_a_paged_prefix(hq, hk, d, page_size, window):
    # (cached prefix, new tokens) per sequence: no prefix, a page-aligned one, a ragged one.
    shapes = [(0, 9), (page_size, 5), (7, 12)]
    kv = [(torch.randn(p + n, hk, d), torch.randn(p + n, hk, d)) for p, n in shapes]
    k_cache, v_cache, tables = scattered_cache(kv, 64, page_size)
    q = torch.randn(sum(n for _, n in shapes), hq, d)
    cu = torch.tensor([0] + [sum(n for _, n in shapes[: i + 1]) for i in range(len(shapes))])
    ctx = torch.tensor([p + n for p, n in shapes])
    out = ops.prefill_attention(q, k_cache, v_cache, tables, cu, ctx, 0.25, window)
    for i, ((p, n), (k, v)) in enumerate(zip(shapes, kv)):
        qs = q[cu[i] : cu[i + 1]]
        expect = dense_attention(qs, k, v, 0.25, torch.arange(p, p + n), window)
        torch.testing.assert_close(out[cu[i] : cu[i + 1]], expect, atol=1e-5, rtol=1e-5)


def test_rms_norm_with_and_without_residual():
    x, r, w = torch.randn(5, 24), torch.randn(5, 24), torch.randn(24)
    out, res = ops.rms_norm(x, w, 1e-6)
    expect = x / torch.sqrt((x * x).mean(-1, keepdim=True) + 1e-6) * w
    torch.testing.assert_close(out, expect)
    assert res is x
    out, res = ops.rms_norm(x, w, 1e-6, residual=r)
    s = x + r
    torch.testing.assert_close(out, s / torch.sqrt((s * s).mean(-1, keepdim=True) + 1e-6) * w)
    torch.testing.assert_close(res, s)


def test_rope_rotates_pairs_by_position_angle():
    d, theta = 8, 100.0
    positions = torch.tensor([0, 3, 11])
    inv = 1.0 / theta ** (torch.arange(0, d, 2).float() / d)
    ang = torch.arange(16).float()[:, None] * inv[None]
    cos, sin = torch.cat([ang.cos()] * 2, -1), torch.cat([ang.sin()] * 2, -1)
    q, k = torch.randn(3, 2, d), torch.randn(3, 1, d)
    rq, rk = ops.rope(q, k, positions, cos, sin)
    for t, pos in enumerate(positions.tolist()):
        for j in range(d // 2):
            a = pos * inv[j]
            x1, x2 = q[t, :, j], q[t, :, j + d // 2]
            torch.testing.assert_close(rq[t, :, j], x1 * math.cos(a) - x2 * math.sin(a))
            torch.testing.assert_close(rq[t, :, j + d // 2], x2 * math.cos(a) + x1 * math.sin(a))
    assert rk.shape == k.shape
    torch.testing.assert_close(ops.rope(q, k, torch.zeros(3, dtype=torch.long), cos, sin)[1], k)


def test_silu_and_mul():
    x = torch.randn(4, 10)
    gate, up = x[:, :5], x[:, 5:]
    torch.testing.assert_close(ops.silu_and_mul(x), gate / (1 + torch.exp(-gate)) * up)


def test_write_kv_places_rows_in_their_slots():
    k_cache = torch.zeros(2, 5, 4, 3)
    v_cache = torch.zeros_like(k_cache)
    k, v = torch.randn(3, 2, 3), torch.randn(3, 2, 3)
    slots = torch.tensor([17, 2, 9])  # page 4 offset 1, page 0 offset 2, page 2 offset 1
    ops.write_kv(k, v, k_cache, v_cache, slots)
    for t, s in enumerate(slots.tolist()):
        torch.testing.assert_close(k_cache[:, s // 4, s % 4], k[t])
        torch.testing.assert_close(v_cache[:, s // 4, s % 4], v[t])
    assert torch.count_nonzero(k_cache) == k.numel(), "nothing outside the given slots is written"


def test_write_kv_skips_padding_slots():
    """A negative slot is padding (as in the compiled and Triton kernels), not the cache's last slot."""
    k_cache = torch.zeros(2, 5, 4, 3)
    v_cache = torch.zeros_like(k_cache)
    k, v = torch.randn(3, 2, 3), torch.randn(3, 2, 3)
    ops.write_kv(k, v, k_cache, v_cache, torch.tensor([6, -1, 0]))
    torch.testing.assert_close(k_cache[:, 1, 2], k[0])
    torch.testing.assert_close(v_cache[:, 0, 0], v[2])
    assert torch.count_nonzero(k_cache[:, 4]) == 0 and torch.count_nonzero(k_cache) == 2 * 2 * 3


def test_pack_unpack_pages_round_trip():
    kv = torch.randn(3, 2, 2, 10, 4, 8)
    pages = torch.tensor([7, 2, 5])
    chunk = ops.pack_pages(kv, pages)
    assert chunk.shape == (3, 2, 2, 3, 4, 8) and chunk.is_contiguous()
    torch.testing.assert_close(chunk[:, :, :, 1], kv[:, :, :, 2])
    other = torch.zeros_like(kv)
    ops.unpack_pages(other, torch.tensor([0, 1, 9]), chunk)
    torch.testing.assert_close(other[:, :, :, 9], kv[:, :, :, 5])
    torch.testing.assert_close(other[:, :, :, [0, 1, 9]], chunk)
