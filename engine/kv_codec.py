"""KV as it leaves an engine (hand-off to a decode worker, chunks in the store): in the cache's own
dtype, or quantized to int8 to move and keep about a quarter of float32's bytes.

``int8`` quantizes every vector of ``head_dim`` values (one layer, K or V, one KV head, one token)
on its own: symmetric, ``scale = max|x| / 127``, ``code = round(x / scale)``, so each value is off
by at most half its vector's scale. A packed buffer keeps its six dimensions and gains four bytes on
the last: ``[layers, 2, kv_heads, pages, page_size, head_dim + 4]`` int8, the codes then the
float32 scale's bytes. One tensor carries both (one wire frame, one store chunk), its leading
dimensions slice as the full-precision layout's do (a group of layers, pages from an offset), and a
receiver tells the two apart by dtype. An engine set to int8 takes either; one left at ``auto``
refuses int8 (its cache entries, and what it writes back to the store, stay exact).

Only what leaves the engine is quantized: pages keep the cache's dtype, so a decode worker
attends over dequantized prompt KV and full-precision KV of the tokens it generates (the agreement
with float32 KV is measured by ``bench/kv_quant.py``).
"""

from __future__ import annotations

import torch

from engine.config import KV_DTYPES, ModelConfig
from kernels import backend_for

SCALE_BYTES = 4  # a float32 scale per vector, stored after its codes


def encode(kv: torch.Tensor, kv_dtype: str) -> torch.Tensor:
    """Packed KV ``[..., head_dim]`` as it travels under ``kv_dtype`` (``auto``: itself)."""
    if kv_dtype == "auto":
        return kv
    if kv_dtype != "int8":
        raise ValueError(f"kv_dtype must be one of {list(KV_DTYPES)}, got {kv_dtype!r}")
    return backend_for(kv.device).kv_int8_encode(kv.float())


def is_encoded(kv: torch.Tensor) -> bool:
    """Whether a packed buffer is int8-encoded (a full-precision one is a float dtype)."""
    return kv.dtype == torch.int8


def decode(kv: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Packed KV in ``dtype``: an encoded buffer dequantized, any other converted."""
    if not is_encoded(kv):
        return kv.to(dtype)
    return backend_for(kv.device).kv_int8_decode(kv).to(dtype)


def wire_head_dim(head_dim: int, kv_dtype: str) -> int:
    """The last dimension of a packed buffer under ``kv_dtype``."""
    return head_dim + SCALE_BYTES if kv_dtype == "int8" else head_dim


def bytes_per_token(cfg: ModelConfig, cache_dtype: torch.dtype, kv_dtype: str) -> int:
    """What one token's KV (all layers, K and V) weighs on the wire and in the store."""
    if kv_dtype not in KV_DTYPES:
        raise ValueError(f"kv_dtype must be one of {list(KV_DTYPES)}, got {kv_dtype!r}")
    elem = 1 if kv_dtype == "int8" else torch.empty((), dtype=cache_dtype).element_size()
    return cfg.num_layers * 2 * cfg.num_kv_heads * wire_head_dim(cfg.head_dim, kv_dtype) * elem
