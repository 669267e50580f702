"""Moving K/V in and out of pages: new rows into their slots, whole pages ⇄ contiguous chunk buffers.

Cache layout: ``kv_cache[L, 2, Hk, P, page_size, D]``; a layer's K or V is ``[Hk, P, page_size, D]``
and a *slot* is ``page * page_size + offset`` (see :mod:`kernels.reference`).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from kernels.triton.checks import as_index, check_cache_pair, check_float, check_same_device, next_pow2


@triton.jit
def _write_kv_kernel(
    k_ptr,
    v_ptr,
    k_cache_ptr,
    v_cache_ptr,
    slots_ptr,
    k_tok_stride,
    k_head_stride,
    v_tok_stride,
    v_head_stride,
    cache_head_stride,
    cache_page_stride,
    cache_tok_stride,
    num_kv_heads,
    head_dim,
    page_size,
    BLOCK_H: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    tok = tl.program_id(0).to(tl.int64)
    slot = tl.load(slots_ptr + tok).to(tl.int64)
    if slot >= 0:  # negative slots are padding: nothing to store
        heads = tl.arange(0, BLOCK_H).to(tl.int64)[:, None]
        cols = tl.arange(0, BLOCK_D)[None, :]
        mask = (heads < num_kv_heads) & (cols < head_dim)
        dst = heads * cache_head_stride + (slot // page_size) * cache_page_stride
        dst += (slot % page_size) * cache_tok_stride + cols
        k = tl.load(k_ptr + tok * k_tok_stride + heads * k_head_stride + cols, mask=mask)
        v = tl.load(v_ptr + tok * v_tok_stride + heads * v_head_stride + cols, mask=mask)
        tl.store(k_cache_ptr + dst, k.to(k_cache_ptr.dtype.element_ty), mask=mask)
        tl.store(v_cache_ptr + dst, v.to(v_cache_ptr.dtype.element_ty), mask=mask)


def write_kv(
    k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, slots: torch.Tensor
) -> None:
    """Same contract as :func:`kernels.reference.write_kv`; a negative slot (padding) is skipped.

    Slots must be below ``num_pages * page_size``; that is not checked (it would need a device sync).
    """
    check_float("k", k, 3)
    check_float("v", v, 3)
    check_cache_pair(k_cache, v_cache)
    check_same_device("k, v and the caches", k, v, k_cache)
    num_kv_heads, _, page_size, head_dim = k_cache.shape
    if k.shape != v.shape or k.shape[1:] != (num_kv_heads, head_dim):
        raise ValueError(
            f"k {tuple(k.shape)} and v {tuple(v.shape)} must be [T, {num_kv_heads}, {head_dim}] like the cache"
        )
    slots = as_index("slots", slots, 1, k.device)
    if slots.shape[0] != k.shape[0]:
        raise ValueError(f"slots has {slots.shape[0]} entries for {k.shape[0]} tokens")
    if k.shape[0] == 0:
        return
    _write_kv_kernel[(k.shape[0],)](
        k,
        v,
        k_cache,
        v_cache,
        slots,
        k.stride(0),
        k.stride(1),
        v.stride(0),
        v.stride(1),
        k_cache.stride(0),
        k_cache.stride(1),
        k_cache.stride(2),
        num_kv_heads,
        head_dim,
        page_size,
        BLOCK_H=next_pow2(num_kv_heads),
        BLOCK_D=next_pow2(head_dim),
    )


@triton.jit
def _copy_pages_kernel(
    src_ptr,
    dst_ptr,
    page_ids_ptr,
    src_s0,
    src_s1,
    src_s2,
    src_s3,
    dst_s0,
    dst_s1,
    dst_s2,
    dst_s3,
    num_kv_heads,
    page_elems,
    GATHER: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """Copy one page (``page_size * D`` contiguous elements) of one (layer, K|V, head).

    GATHER: cache page ``page_ids[i]`` -> chunk page ``i`` (pack); else the reverse (unpack).
    """
    i = tl.program_id(0).to(tl.int64)
    outer = tl.program_id(1).to(tl.int64)
    layer = outer // (2 * num_kv_heads)
    kv = (outer // num_kv_heads) % 2
    head = outer % num_kv_heads
    page = tl.load(page_ids_ptr + i).to(tl.int64)
    if GATHER:
        src_page = page
        dst_page = i
    else:
        src_page = i
        dst_page = page
    src = src_ptr + layer * src_s0 + kv * src_s1 + head * src_s2 + src_page * src_s3
    dst = dst_ptr + layer * dst_s0 + kv * dst_s1 + head * dst_s2 + dst_page * dst_s3
    for start in range(0, page_elems, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        mask = offs < page_elems
        x = tl.load(src + offs, mask=mask)
        tl.store(dst + offs, x.to(dst_ptr.dtype.element_ty), mask=mask)


def _check_kv_cache(kv_cache: torch.Tensor) -> None:
    check_float("kv_cache", kv_cache, 6)
    if kv_cache.shape[1] != 2:
        raise ValueError(f"kv_cache must be [L, 2, Hk, P, page, D], got {tuple(kv_cache.shape)}")
    _check_flat_pages("kv_cache", kv_cache)


def _check_flat_pages(name: str, t: torch.Tensor) -> None:
    if t.shape[4] > 1 and t.stride(4) != t.shape[5]:
        raise ValueError(f"{name}'s pages must be contiguous [page_size, D] blocks (call .contiguous())")


def _copy_pages(src: torch.Tensor, dst: torch.Tensor, page_ids: torch.Tensor, gather: bool) -> None:
    num_layers, _, num_kv_heads, _, page_size, head_dim = src.shape
    if page_ids.shape[0] == 0 or num_layers * num_kv_heads * page_size * head_dim == 0:
        return
    page_elems = page_size * head_dim
    block = min(4096, next_pow2(page_elems))
    _copy_pages_kernel[(page_ids.shape[0], num_layers * 2 * num_kv_heads)](
        src,
        dst,
        page_ids,
        *src.stride()[:4],
        *dst.stride()[:4],
        num_kv_heads,
        page_elems,
        GATHER=gather,
        BLOCK=block,
        num_warps=4,
    )


def pack_pages(kv_cache: torch.Tensor, page_ids: torch.Tensor) -> torch.Tensor:
    """Same contract as :func:`kernels.reference.pack_pages`: ``[L, 2, Hk, n, page, D]``, contiguous."""
    _check_kv_cache(kv_cache)
    page_ids = as_index("page_ids", page_ids, 1, kv_cache.device)
    num_layers, _, num_kv_heads, _, page_size, head_dim = kv_cache.shape
    shape = (num_layers, 2, num_kv_heads, page_ids.shape[0], page_size, head_dim)
    chunk = torch.empty(shape, dtype=kv_cache.dtype, device=kv_cache.device)
    _copy_pages(kv_cache, chunk, page_ids, gather=True)
    return chunk


def unpack_pages(kv_cache: torch.Tensor, page_ids: torch.Tensor, chunk: torch.Tensor) -> None:
    """Same contract as :func:`kernels.reference.unpack_pages`; ``chunk`` must be on the cache's device."""
    _check_kv_cache(kv_cache)
    check_float("chunk", chunk, 6)
    check_same_device("kv_cache and chunk", kv_cache, chunk)
    page_ids = as_index("page_ids", page_ids, 1, kv_cache.device)
    num_layers, _, num_kv_heads, _, page_size, head_dim = kv_cache.shape
    expected = (num_layers, 2, num_kv_heads, page_ids.shape[0], page_size, head_dim)
    if tuple(chunk.shape) != expected:
        raise ValueError(f"chunk {tuple(chunk.shape)} must be {expected} for {page_ids.shape[0]} pages")
    _check_flat_pages("chunk", chunk)
    _copy_pages(chunk, kv_cache, page_ids, gather=False)
