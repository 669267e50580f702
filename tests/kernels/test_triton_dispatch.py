"""kernels.triton_ops as the dispatch sees it: same signatures as the references, importable without
a GPU, and picked for CUDA tensors (the ``gpu`` test, which also runs every op in bfloat16)."""

from __future__ import annotations

import inspect
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

import kernels
from kernels import reference, triton_ops

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("op", kernels.OPS)
def test_every_op_has_the_reference_signature(op):
    assert inspect.signature(getattr(triton_ops, op)) == inspect.signature(getattr(reference, op))


def test_importing_triton_ops_imports_no_triton():
    code = "import sys, kernels.triton_ops; assert 'triton' not in sys.modules, 'triton imported eagerly'"
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)


BF16_TOL = dict(atol=3e-2, rtol=3e-2)
Randn = Callable[..., torch.Tensor]  # shape -> a bfloat16 CUDA tensor from the test's generator


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_dispatch_picks_triton_and_matches_reference_in_bf16():
    fast, slow = kernels.backend_for("cuda"), kernels.backend_for("cpu")
    for op in kernels.OPS:
        assert getattr(fast, op) is getattr(triton_ops, op), op
        assert getattr(slow, op) is getattr(reference, op), op

    gen = torch.Generator(device="cuda").manual_seed(0)

    def randn(*shape):
        return torch.randn(*shape, generator=gen, device="cuda").to(torch.bfloat16)

    k = _check_pointwise_ops(fast, randn)
    kv_cache = _check_cache_ops(fast, randn, k)
    _check_attention(fast, randn, kv_cache)


def _check_pointwise_ops(fast, randn: Randn) -> torch.Tensor:
    """rms_norm, silu_and_mul and rope against the references; returns rope's k input ``[6, 2, 64]``."""
    x, res, w = randn(5, 256), randn(5, 256), randn(256)
    for a, b in zip(fast.rms_norm(x, w, 1e-6, res), reference.rms_norm(x, w, 1e-6, res)):
        torch.testing.assert_close(a, b, **BF16_TOL)
    g = randn(5, 512)
    torch.testing.assert_close(fast.silu_and_mul(g), reference.silu_and_mul(g), **BF16_TOL)
    q, k, pos = randn(6, 8, 64), randn(6, 2, 64), torch.randperm(32, device="cuda")[:6]
    cos, sin = randn(32, 64).float(), randn(32, 64).float()
    for a, b in zip(fast.rope(q, k, pos, cos, sin), reference.rope(q, k, pos, cos, sin)):
        torch.testing.assert_close(a, b, **BF16_TOL)
    return k


def _check_cache_ops(fast, randn: Randn, k: torch.Tensor) -> torch.Tensor:
    """write_kv, pack_pages and unpack_pages bit-exact against the references on a
    ``[2, 2, 2, 12, 16, 64]`` kv_cache, which is returned as the ops left it."""
    kv_cache = randn(2, 2, 2, 12, 16, 64)
    expected = kv_cache.clone()
    slots = torch.randperm(12 * 16, device="cuda")[:6]
    fast.write_kv(k, k, kv_cache[1, 0], kv_cache[1, 1], slots)
    reference.write_kv(k, k, expected[1, 0], expected[1, 1], slots)
    torch.testing.assert_close(kv_cache, expected, atol=0, rtol=0)
    page_ids = torch.tensor([7, 2, 9], device="cuda")
    chunk = fast.pack_pages(kv_cache, page_ids)
    torch.testing.assert_close(chunk, reference.pack_pages(kv_cache, page_ids), atol=0, rtol=0)
    fast.unpack_pages(kv_cache, page_ids.flip(0), chunk)
    reference.unpack_pages(expected, page_ids.flip(0), chunk)
    torch.testing.assert_close(kv_cache, expected, atol=0, rtol=0)
    return kv_cache


def _check_attention(fast, randn: Randn, kv_cache: torch.Tensor) -> None:
    """Paged decode and prefill attention on layer 0 of ``kv_cache``, with and without a window."""
    block_tables = torch.randperm(12, device="cuda").view(2, 6).int()
    context_lens = torch.tensor([70, 33], device="cuda")
    k_cache, v_cache = kv_cache[0, 0], kv_cache[0, 1]
    qd = randn(2, 8, 64)
    for window in (None, 20):
        torch.testing.assert_close(
            fast.paged_decode_attention(qd, k_cache, v_cache, block_tables, context_lens, 0.125, window),
            reference.paged_decode_attention(qd, k_cache, v_cache, block_tables, context_lens, 0.125, window),
            **BF16_TOL,
        )
        cu = torch.tensor([0, 6, 39], device="cuda")  # 6 new tokens after a 64-token prefix; 33 fresh
        qp = randn(39, 8, 64)
        torch.testing.assert_close(
            fast.prefill_attention(qp, k_cache, v_cache, block_tables, cu, context_lens, 0.125, window),
            reference.prefill_attention(qp, k_cache, v_cache, block_tables, cu, context_lens, 0.125, window),
            **BF16_TOL,
        )
