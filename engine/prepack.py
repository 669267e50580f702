"""Linears on CPU through oneDNN with weights reordered once, at load (what vLLM's CPU path and
Inductor's weight freezing do).

``F.linear`` on CPU hands each call to a BLAS sgemm that repacks the weight panel by panel as it
goes; for the skinny products of decoding (a few rows against a 576 x 1536 or 576 x 49,152 weight)
that repacking is a large part of the call. oneDNN's reordered ("blocked") weight layout is made
once, at load, and its kernels read it as laid out. Measured here (2 threads, fp32, SmolLM2's
shapes; ``bench/engine.py`` has the end-to-end figures): 2.0-2.4x faster at 1 and 8 rows, 1.3-2.4x
at 32, 1.1-1.2x for a 512-token prefill chunk, and the 49,152-row LM head 2.5x faster at 1 row.

Results differ from ``F.linear``'s by float32 rounding only (another summation order); the
exactness tests against transformers run with it. The original weight is not kept (a tied LM head
still shares the embedding's, which the embedding needs), so memory stays as it was, plus one copy
of a tied LM head.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

PREPACK_DTYPES = (torch.float32,)


def prepack_available(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether this build and device can run prepacked linears in ``dtype``."""
    return device.type == "cpu" and dtype in PREPACK_DTYPES and torch.backends.mkldnn.is_available()


class PrepackedLinear(nn.Module):
    """``y = x @ W.T + bias`` with W in oneDNN's blocked layout (made once from ``linear``)."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        weight = linear.weight.detach().contiguous()
        self.register_buffer("packed_weight", torch.ops.mkldnn._reorder_linear_weight(weight))
        self.bias = None if linear.bias is None else nn.Parameter(linear.bias.detach(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features)
        if rows.shape[0] == 0:
            return x.new_empty(*x.shape[:-1], self.out_features)
        out = torch.ops.mkldnn._linear_pointwise(
            rows.contiguous(), self.packed_weight, self.bias, "none", [None], ""
        )
        return out.view(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, oneDNN blocked weight"


@torch.no_grad()
def prepack_linears(model: nn.Module) -> int:
    """Replace every ``nn.Linear`` of ``model`` with a ``PrepackedLinear``, in place, checking the
    first against ``F.linear`` (a build whose oneDNN misbehaves raises here, not mid-request).
    Returns how many were replaced."""
    replaced = 0
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, nn.Linear):
                packed = PrepackedLinear(child)
                if not replaced:
                    _check(child, packed)
                setattr(module, name, packed)
                replaced += 1
    return replaced


def _check(linear: nn.Linear, packed: PrepackedLinear) -> None:
    x = torch.randn(
        3, linear.in_features, dtype=linear.weight.dtype, generator=torch.Generator().manual_seed(0)
    )
    expect, got = F.linear(x, linear.weight, linear.bias), packed(x)
    scale = expect.abs().max().item() or 1.0
    if not torch.allclose(got, expect, rtol=1e-4, atol=1e-4 * scale):
        raise RuntimeError(
            f"oneDNN's prepacked linear disagrees with F.linear by {(got - expect).abs().max().item():.3g} "
            "on this machine; load with prepack=False"
        )
