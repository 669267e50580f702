"""Validation shared by the launchers: misuse raises ``ValueError`` naming the argument and the fix.

Kernels address tensors through explicit strides, so the launchers accept views (a q sliced out of
a fused qkv projection, a layer's K out of the whole cache) as long as the innermost dimension is
contiguous. Index tensors (slots, positions, block tables, lengths) are moved to the data's device,
as the references do, and must hold integers.
"""

from __future__ import annotations

import torch

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
INDEX_DTYPES = (torch.int32, torch.int64)


def next_pow2(n: int, minimum: int = 1) -> int:
    """The smallest power of two ``>= max(n, minimum)``: block sizes must be powers of two."""
    n = max(n, minimum)
    return 1 << (n - 1).bit_length()


def check_float(name: str, t: torch.Tensor, ndim: int) -> None:
    if t.dim() != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {tuple(t.shape)}")
    if t.dtype not in FLOAT_DTYPES:
        raise ValueError(f"{name} must be float32, float16 or bfloat16, got {t.dtype}")
    if t.shape[-1] > 1 and t.stride(-1) != 1:
        raise ValueError(f"{name} must be contiguous in its last dimension (call .contiguous())")


def check_same_dtype(names: str, *tensors: torch.Tensor) -> None:
    dtypes = {t.dtype for t in tensors}
    if len(dtypes) != 1:
        raise ValueError(f"{names} must share one dtype, got {sorted(map(str, dtypes))}")


def check_same_device(names: str, *tensors: torch.Tensor) -> None:
    devices = {t.device for t in tensors}
    if len(devices) != 1:
        raise ValueError(f"{names} must be on one device, got {sorted(map(str, devices))}")


def as_index(name: str, t: torch.Tensor, ndim: int, device: torch.device) -> torch.Tensor:
    """``t`` on ``device``, contiguous, after checking it is an integer tensor of rank ``ndim``."""
    if t.dim() != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {tuple(t.shape)}")
    if t.dtype not in INDEX_DTYPES:
        raise ValueError(f"{name} must be int32 or int64, got {t.dtype}")
    return t.to(device, non_blocking=True).contiguous()


def check_cache_pair(k_cache: torch.Tensor, v_cache: torch.Tensor) -> None:
    """One layer's K and V pages: ``[num_kv_heads, num_pages, page_size, head_dim]`` each."""
    check_float("k_cache", k_cache, 4)
    check_float("v_cache", v_cache, 4)
    if k_cache.shape != v_cache.shape:
        raise ValueError(f"k_cache {tuple(k_cache.shape)} and v_cache {tuple(v_cache.shape)} differ")
    if k_cache.stride() != v_cache.stride():
        raise ValueError("k_cache and v_cache must have the same strides (views of one kv_cache)")
    check_same_dtype("k_cache and v_cache", k_cache, v_cache)
    check_same_device("k_cache and v_cache", k_cache, v_cache)


def dot_precision(dtype: torch.dtype) -> str:
    # float32 dots default to TF32 on tensor cores; the fp32 path must match PyTorch's fp32 matmul.
    return "ieee" if dtype == torch.float32 else "tf32"


def check_attention(
    q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, sliding_window: int | None
) -> tuple[int, int, int, int]:
    """q ``[tokens, num_heads, head_dim]`` against one layer's paged caches, as both attention
    launchers take them. Returns ``(num_heads, num_kv_heads, page_size, head_dim)``."""
    check_float("q", q, 3)
    check_cache_pair(k_cache, v_cache)
    check_same_dtype("q and the caches", q, k_cache)
    check_same_device("q and the caches", q, k_cache)
    _, num_heads, head_dim = q.shape
    num_kv_heads, _, page_size, cache_head_dim = k_cache.shape
    if cache_head_dim != head_dim:
        raise ValueError(f"q's head_dim {head_dim} differs from the cache's {cache_head_dim}")
    if num_heads % num_kv_heads:
        raise ValueError(f"num_heads {num_heads} must be a multiple of num_kv_heads {num_kv_heads}")
    if sliding_window is not None and sliding_window < 1:
        raise ValueError(f"sliding_window must be None or >= 1, got {sliding_window}")
    return num_heads, num_kv_heads, page_size, head_dim
