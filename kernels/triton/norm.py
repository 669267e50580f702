"""RMSNorm with a fused residual add: one program per row, the whole row in one block."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.triton.checks import check_float, check_same_device, next_pow2


@triton.jit
def _rms_norm_kernel(
    x_ptr,
    res_ptr,
    w_ptr,
    out_ptr,
    new_res_ptr,
    x_row_stride,
    res_row_stride,
    hidden,
    eps,
    HAS_RESIDUAL: tl.constexpr,
    BLOCK_H: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK_H)
    mask = cols < hidden
    x = tl.load(x_ptr + row * x_row_stride + cols, mask=mask, other=0.0)
    if HAS_RESIDUAL:
        r = tl.load(res_ptr + row * res_row_stride + cols, mask=mask, other=0.0)
        # Rounded to the residual stream's dtype before the norm, as the reference adds in that dtype.
        x = (x.to(tl.float32) + r.to(tl.float32)).to(new_res_ptr.dtype.element_ty)
        tl.store(new_res_ptr + row * hidden + cols, x, mask=mask)
    h = x.to(tl.float32)
    var = tl.sum(h * h, axis=0) / hidden
    h = (h * tl.rsqrt(var + eps)).to(x.dtype).to(tl.float32)
    w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + row * hidden + cols, (w * h).to(out_ptr.dtype.element_ty), mask=mask)


def _check_x_weight(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """x viewed as rows ``[N, H]`` after checking that ``weight`` is its ``[H]`` scale."""
    if x.dim() < 1 or x.shape[-1] == 0:
        raise ValueError(f"x must have a non-empty last dimension, got shape {tuple(x.shape)}")
    hidden = x.shape[-1]
    check_float("weight", weight, 1)
    if weight.shape[0] != hidden:
        raise ValueError(f"weight has {weight.shape[0]} elements, x's last dimension is {hidden}")
    check_same_device("x and weight", x, weight)
    x2 = x.reshape(-1, hidden)
    check_float("x", x2, 2)
    return x2


def _residual_rows(
    x: torch.Tensor, x2: torch.Tensor, residual: torch.Tensor | None
) -> tuple[torch.Tensor, torch.dtype]:
    """``(residual rows, dtype of the residual stream)``; without a residual, ``x2`` stands in
    (the kernel does not read it) and the stream keeps x's dtype."""
    if residual is None:
        return x2, x.dtype
    if residual.shape != x.shape:
        raise ValueError(f"residual {tuple(residual.shape)} must match x {tuple(x.shape)}")
    check_same_device("x and residual", x, residual)
    res2 = residual.reshape(-1, x.shape[-1])
    check_float("residual", res2, 2)
    return res2, torch.promote_types(x.dtype, residual.dtype)


def rms_norm(
    x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Same contract as :func:`kernels.reference.rms_norm`: ``(normed, new_residual)`` over ``x[..., H]``."""
    x2 = _check_x_weight(x, weight)
    res2, res_dtype = _residual_rows(x, x2, residual)
    out = torch.empty(x.shape, dtype=torch.promote_types(weight.dtype, res_dtype), device=x.device)
    new_res = torch.empty(x.shape, dtype=res_dtype, device=x.device) if residual is not None else x
    rows, hidden = x2.shape
    if rows > 0:
        block = next_pow2(hidden)
        _rms_norm_kernel[(rows,)](
            x2, res2, weight, out, new_res, x2.stride(0), res2.stride(0), hidden, eps,
            HAS_RESIDUAL=residual is not None, BLOCK_H=block, num_warps=min(16, max(1, block // 512)),
        )  # fmt: skip
    return out, new_res
