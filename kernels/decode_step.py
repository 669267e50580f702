"""A decode step through every decoder layer in one compiled call (``kernels/cpu/decode_step.c``).

:class:`FusedDecoder` holds the C structs that describe a model's layers (their quantized linears'
small-batch kernels, norms, the KV cache's layout, the RoPE tables) and runs a step of one token of
each of a few sequences with one ctypes call. ``engine.decode_step`` decides which models and steps
take it; what it computes is what the layer-by-layer path computes with the same kernels, bit for bit.
"""

from __future__ import annotations

import ctypes
import functools
from dataclasses import dataclass
from typing import Literal

import torch

from kernels.cpu_ext import (
    SMALL_BATCH_ROWS,
    cpu_float32,
    gemv_available,
    int4_rows_fit,
    int8_weight_fits,
    library,
)

_I64, _PTR = ctypes.c_int64, ctypes.c_void_p


@dataclass(frozen=True)
class LinearKernel:
    """A linear :class:`FusedDecoder` runs with a small-batch kernel: ``kind`` "int4", ``weight`` the
    rows ``cpu_ext.int4_gemv_pack`` made; or "int8", ``weight`` int8 codes [groups, n, group] and
    ``scales`` bf16 [groups, n] (as ``cpu_ext.int8_gemv``). Up to ``SMALL_BATCH_ROWS`` tokens a
    step either way. ``bias``: float32 [n] or None."""

    kind: Literal["int4", "int8"]
    weight: torch.Tensor
    out_features: int
    in_features: int
    scales: torch.Tensor | None = None
    bias: torch.Tensor | None = None


@dataclass(frozen=True)
class DecoderLayerWeights:
    """One decoder layer as the compiled step reads it: its four linears and two RMSNorm weights."""

    qkv: LinearKernel
    o: LinearKernel
    gate_up: LinearKernel
    down: LinearKernel
    input_norm: torch.Tensor
    post_norm: torch.Tensor


class _Linear(ctypes.Structure):
    _fields_ = [
        *((name, ctypes.c_int64) for name in ("kind", "n", "k", "groups", "group")),
        *((name, ctypes.c_void_p) for name in ("weight", "scales", "bias")),
    ]


class _Layer(ctypes.Structure):
    _fields_ = [
        *((name, _Linear) for name in ("qkv", "o", "gate_up", "down")),
        *((name, ctypes.c_void_p) for name in ("input_norm", "post_norm", "k_cache", "v_cache")),
    ]


class _Model(ctypes.Structure):
    _fields_ = [
        *(
            (name, ctypes.c_int64)
            for name in (
                "num_layers",
                "hidden",
                "heads",
                "kv_heads",
                "head_dim",
                "inter",
                "page_size",
                "cache_head_stride",
                "capacity",
                "window",
            )
        ),
        ("eps", ctypes.c_double),
        ("scale", ctypes.c_double),
        *((name, ctypes.c_void_p) for name in ("cos", "sin", "final_norm")),
        ("layers", ctypes.POINTER(_Layer)),
    ]


class FusedDecoder:
    """A decode step (one token of each of up to ``max_rows`` sequences) through every decoder layer
    of a Llama-family model in one compiled call (``kernels/cpu/decode_step.c``): the same kernels, in
    the same order, as the layer-by-layer path with its small-batch linears, so the same result bit
    for bit, without ~15 Python-level calls a layer. ``max_rows``: ``SMALL_BATCH_ROWS``. Built with
    :meth:`build` (None where it does not apply); holds every tensor it points into. Not reentrant:
    one scratch buffer serves every call (the engine steps from one thread)."""

    def __init__(
        self,
        model: _Model,
        layers: ctypes.Array,
        keep: list[torch.Tensor],
        lib: ctypes.CDLL,
        max_positions: int,
    ) -> None:
        self._model, self._layers, self._keep, self._lib = model, layers, keep, lib
        self.max_rows, self.hidden = SMALL_BATCH_ROWS, model.hidden
        self.max_positions = max_positions  # the RoPE tables' rows
        self._scratch = torch.empty(
            lib.tandem_decode_scratch(ctypes.byref(model), self.max_rows), dtype=torch.float32
        )

    @classmethod
    def build(
        cls,
        layers: list[DecoderLayerWeights],
        final_norm: torch.Tensor,
        rope_tables: tuple[torch.Tensor, torch.Tensor],
        kv_cache: torch.Tensor,
        *,
        num_heads: int,
        num_kv_heads: int,
        head_dim: int,
        eps: float,
        scale: float,
        sliding_window: int | None,
    ) -> FusedDecoder | None:
        """``kv_cache``: the engine's [layers, 2, kv_heads, pages, page_size, head_dim]. None where
        this does not apply: no compiled library, tensors not float32 contiguous on CPU, linears whose
        shapes do not chain, more query heads per KV head than the attention kernel takes."""
        lib = _decode_library()
        cos, sin = rope_tables
        norms = [final_norm, cos, sin] + [t for layer in layers for t in (layer.input_norm, layer.post_norm)]
        if (
            lib is None
            or not layers
            or kv_cache.dim() != 6
            or kv_cache.shape[:1] + kv_cache.shape[2:3] + kv_cache.shape[5:]
            != (len(layers), num_kv_heads, head_dim)
            or not cpu_float32(kv_cache, *norms)
            or not all(t.is_contiguous() for t in (kv_cache, *norms))
            or num_heads % num_kv_heads
            or num_heads // num_kv_heads > 32
            or cos.shape[-1] != head_dim
        ):
            return None
        hidden, q, kv = final_norm.numel(), num_heads * head_dim, num_kv_heads * head_dim
        inter = layers[0].down.in_features
        shapes = {
            "qkv": (q + 2 * kv, hidden),
            "o": (hidden, q),
            "gate_up": (2 * inter, hidden),
            "down": (hidden, inter),
        }
        keep: list[torch.Tensor] = [kv_cache, *norms]
        structs = (_Layer * len(layers))()
        for i, layer in enumerate(layers):
            for name, shape in shapes.items():
                linear = getattr(layer, name)
                if (linear.out_features, linear.in_features) != shape:
                    return None
                fields = _linear_fields(linear, keep)
                if fields is None:
                    return None
                setattr(structs[i], name, fields)
            structs[i].input_norm, structs[i].post_norm = (
                layer.input_norm.data_ptr(),
                layer.post_norm.data_ptr(),
            )
            structs[i].k_cache, structs[i].v_cache = kv_cache[i, 0].data_ptr(), kv_cache[i, 1].data_ptr()
        _, _, _, num_pages, page_size, _ = kv_cache.shape
        model = _Model(
            num_layers=len(layers), hidden=hidden, heads=num_heads, kv_heads=num_kv_heads, head_dim=head_dim,
            inter=inter, page_size=page_size, cache_head_stride=kv_cache.stride(2), capacity=num_pages * page_size,
            window=sliding_window or 0, eps=eps, scale=scale, cos=cos.data_ptr(), sin=sin.data_ptr(),
            final_norm=final_norm.data_ptr(), layers=structs,
        )  # fmt: skip
        return cls(model, structs, keep, lib, cos.shape[0])

    def __call__(
        self,
        embedding: torch.Tensor,
        positions: torch.Tensor,
        slots: torch.Tensor,
        block_tables: torch.Tensor,
        context_lens: torch.Tensor,
    ) -> torch.Tensor:
        """The final norm's output [rows, hidden] for one token of each of ``rows`` (<= ``max_rows``)
        sequences: ``embedding`` float32 [rows, hidden], ``positions`` and ``slots`` int64 [rows],
        ``block_tables`` int32 [rows, pages], ``context_lens`` int32 [rows] (counting the token).
        Their K and V go into the cache as the layer path writes them."""
        args = {"embedding": embedding, "positions": positions, "slots": slots, "block_tables": block_tables,
                "context_lens": context_lens}  # fmt: skip
        off_cpu = [name for name, t in args.items() if t.device.type != "cpu"]
        if off_cpu:
            raise ValueError(f"the fused decode step runs on CPU tensors; {', '.join(off_cpu)} are not")
        rows = embedding.shape[0] if embedding.dim() == 2 else 0
        if embedding.dim() != 2 or embedding.shape[1] != self.hidden or embedding.dtype != torch.float32:
            raise ValueError(
                f"embedding must be float32 [rows, {self.hidden}], got {embedding.dtype} {list(embedding.shape)}"
            )
        if not 1 <= rows <= self.max_rows:
            raise ValueError(f"the fused decode step takes 1 to {self.max_rows} tokens, got {rows}")
        embedding = embedding.contiguous()
        positions, slots = positions.to(torch.int64).contiguous(), slots.to(torch.int64).contiguous()
        tables, lens = block_tables.to(torch.int32).contiguous(), context_lens.to(torch.int32).contiguous()
        for name, t in (("positions", positions), ("slots", slots), ("context_lens", lens)):
            if t.shape != (rows,):
                raise ValueError(f"{name} must have one entry per token ({rows}), got shape {list(t.shape)}")
        if tables.dim() != 2 or tables.shape[0] != rows or tables.shape[1] == 0:
            raise ValueError(f"block_tables must be [{rows}, pages >= 1], got {list(tables.shape)}")
        page_size = self._model.page_size
        if int(lens.min()) < 1 or int(lens.max()) > tables.shape[1] * page_size:
            raise ValueError(
                f"context_lens must be 1..{tables.shape[1] * page_size} (the block tables' pages), got {lens.tolist()}"
            )
        if int(positions.min()) < 0 or int(positions.max()) >= self.max_positions:
            raise ValueError(f"positions must be 0..{self.max_positions - 1}, got {positions.tolist()}")
        out = torch.empty((rows, self.hidden), dtype=torch.float32)
        status = self._lib.tandem_decode(
            ctypes.byref(self._model), embedding.data_ptr(), out.data_ptr(), self._scratch.data_ptr(), rows,
            positions.data_ptr(), slots.data_ptr(), tables.data_ptr(), tables.stride(0), lens.data_ptr(),
        )  # fmt: skip
        if status > 0:
            raise IndexError(
                f"slot {int(slots[status - 1])} of token {status - 1} is past the cache's {self._model.capacity} slots"
            )
        if status == -1:
            raise MemoryError("a kernel of the fused decode step could not allocate its scratch")
        if status != 0:
            raise RuntimeError(f"the fused decode step refused a shape its plan took (status {status})")
        return out


def _linear_fields(linear: LinearKernel, keep: list[torch.Tensor]) -> _Linear | None:
    bias = linear.bias
    if bias is not None and (not cpu_float32(bias) or bias.shape != (linear.out_features,)):
        return None
    n, k, weight = linear.out_features, linear.in_features, linear.weight
    if weight.device.type != "cpu":
        return None
    if linear.kind == "int4":
        if not int4_rows_fit(weight, k) or weight.shape[0] != n:
            return None
        fields = _Linear(kind=0, n=n, k=k, weight=weight.data_ptr())
    elif linear.kind == "int8":
        scales = linear.scales
        if scales is None or not int8_weight_fits(weight, scales, k) or weight.shape[1] != n:
            return None
        fields = _Linear(
            kind=1, n=n, k=k, groups=weight.shape[0], group=weight.shape[2], weight=weight.data_ptr()
        )
        fields.scales = scales.data_ptr()
        keep.append(scales)
    else:
        return None
    if bias is not None:
        bias = bias.contiguous()
        fields.bias = bias.data_ptr()
        keep.append(bias)
    keep.append(weight)
    return fields


@functools.cache
def _decode_library() -> ctypes.CDLL | None:
    """The compiled library with the decode step's signatures set, or None (no library, or no
    small-batch GEMVs in this build)."""
    if not gemv_available():
        return None
    lib = library()
    lib.tandem_decode.restype = ctypes.c_int64
    lib.tandem_decode.argtypes = [ctypes.POINTER(_Model), *[_PTR] * 3, _I64, *[_PTR] * 3, _I64, _PTR]
    lib.tandem_decode_scratch.restype = ctypes.c_int64
    lib.tandem_decode_scratch.argtypes = [ctypes.POINTER(_Model), _I64]
    return lib
