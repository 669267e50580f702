"""SiLU·mul of the fused gate/up projection: ``[T, 2I] -> [T, I]``."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.triton.checks import check_float, next_pow2


@triton.jit
def _silu_and_mul_kernel(x_ptr, out_ptr, x_row_stride, inter, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < inter
    gate = tl.load(x_ptr + row * x_row_stride + cols, mask=mask, other=0.0).to(tl.float32)
    up = tl.load(x_ptr + row * x_row_stride + inter + cols, mask=mask, other=0.0).to(tl.float32)
    # Round silu(gate) to the activation dtype first, as the reference's two-step F.silu(gate) * up does.
    act = (gate / (1.0 + tl.exp(-gate))).to(out_ptr.dtype.element_ty).to(tl.float32)
    tl.store(out_ptr + row * inter + cols, (act * up).to(out_ptr.dtype.element_ty), mask=mask)


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    """Same contract as :func:`kernels.reference.silu_and_mul`: ``x[..., 2I]`` holding ``[gate | up]``."""
    if x.dim() < 1 or x.shape[-1] % 2:
        raise ValueError(f"x's last dimension must be even ([gate | up]), got shape {tuple(x.shape)}")
    inter = x.shape[-1] // 2
    x2 = x.reshape(-1, x.shape[-1])
    check_float("x", x2, 2)
    out = torch.empty((*x.shape[:-1], inter), dtype=x.dtype, device=x.device)
    if x2.shape[0] > 0 and inter > 0:
        block = min(1024, next_pow2(inter))
        grid = (x2.shape[0], triton.cdiv(inter, block))
        _silu_and_mul_kernel[grid](x2, out, x2.stride(0), inter, BLOCK=block, num_warps=4)
    return out
