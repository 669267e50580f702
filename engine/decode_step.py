"""Which models and steps take the compiled decode step (``kernels.decode_step.FusedDecoder``).

A decode step of a quantized model at a small batch runs a few milliseconds of arithmetic, but the
layer-by-layer path issues ~15 Python-level calls a layer around it (module calls, views, checks,
allocations, ctypes). The compiled step runs the same kernels in one call. It applies on CPU when
every decoder linear has a small-batch kernel (``one_row_kernel()``: int4 or int8; float32 weights
have none and keep the layer path), to steps whose every token is a decode token, at most
``FusedDecoder.max_rows`` (8) of them, with nobody waiting on per-layer callbacks (the layer-wise
hand-off). Its result is the layer path's, bit for bit.
"""

from __future__ import annotations

import torch
from torch import nn

from kernels.decode_step import DecoderLayerWeights, FusedDecoder

_LINEARS = ("qkv_proj", "o_proj", "gate_up_proj", "down_proj")


def build_decode_step(model: nn.Module, kv_cache: torch.Tensor) -> FusedDecoder | None:
    """The compiled decode step of ``model`` (a Llama-family ``LlamaForCausalLM``) over the engine's
    ``kv_cache``, or None where it does not apply. Build it once the weights are final: it points
    into them."""
    if kv_cache.device.type != "cpu" or getattr(model, "rope_tables", None) is None:
        return None
    weights = []
    for layer in model.layers:
        kernels = [getattr(getattr(layer, name), "one_row_kernel", lambda: None)() for name in _LINEARS]
        if any(k is None for k in kernels):
            return None
        norms = (layer.input_layernorm.detach(), layer.post_attention_layernorm.detach())
        weights.append(DecoderLayerWeights(*kernels, *norms))
    first = model.layers[0]
    return FusedDecoder.build(
        weights, model.norm.detach(), model.rope_tables, kv_cache, num_heads=first.num_heads,
        num_kv_heads=first.num_kv_heads, head_dim=first.head_dim, eps=first.eps, scale=first.scale,
        sliding_window=first.sliding_window,
    )  # fmt: skip
