"""Weight-only quantization (W8A16 / W4A16) of a loaded model's linears, for memory-bound decode.

Batch-1 decode reads every weight once per token, so its speed is the weights' size over memory
bandwidth. :func:`quantize_model` replaces each ``nn.Linear`` (the decoder layers' projections and
the LM head; an embedding tied to the head stays in full precision for lookups) with a module that
keeps the weight as int8 or int4 codes plus scales.

- ``int8``: symmetric, one scale per output channel: ``w = code * scale``, codes in [-127, 127].
- ``int4``: asymmetric, one (scale, zero) per group of ``INT4_GROUP_SIZE`` input channels:
  ``w = (code - 8) * scale + zero``, codes in [0, 15] (PyTorch's tinygemm convention).
- the LM head: int8 under both, with a scale per ``LM_HEAD_INT8_GROUP_SIZE`` inputs.

On CPU the forward pass is PyTorch's packed weight-only matmul (``aten._weight_int8pack_mm``,
``aten._weight_int4pack_mm_for_cpu``) on activations rounded to bfloat16 (see
``CPU_COMPUTE_DTYPE``), at every row count: on the default model they also prefill as fast as float32
BLAS. Elsewhere (CUDA for now) and for shapes the kernels cannot take, the weight is dequantized and
multiplied in the activations' dtype. :class:`Int8Weight` and :class:`Int4Weight` hold the plain
codes and a pure-PyTorch ``dequantize``, the tests' reference.

The default model is a GGUF's Q4_1 decoder weights (blocks of 32 inputs, min/max) and Q8_0 embedding
(blocks of 32, symmetric) dequantized to float32: int4 with groups of 32 and an int8 head with
groups of 32 re-quantize it almost exactly (up to bfloat16 scales).
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from engine.config import QUANTIZATIONS
from kernels import cpu_ext
from kernels.decode_step import LinearKernel

# aten._weight_int4pack_mm_for_cpu takes groups of 32, 64, 128 or 256 inputs. 32 is the most
# accurate, and on SmolLM2 the only accurate one (mean |delta log-prob| vs fp32 0.02, group 64: 0.43,
# its Q4_1 blocks being 32 wide); the kernel's speed hardly depends on it.
INT4_GROUP_SIZE = 32
INT4_N_MULTIPLE = 16  # aten._convert_weight_to_int4pack_for_cpu needs out_features % 16 == 0
# aten._weight_int8pack_mm's bfloat16 kernel (torch 2.13, AVX-512) reads past the row when
# in_features % 16 != 0: garbage or a crash. Such linears take the dequantize-and-multiply path.
INT8_K_MULTIPLE = 16
# The LM head's logits decide every token: it keeps 8 bits under int4 too (as llama.cpp's Q4 files keep
# the output matrix at Q8_0/Q6_K), with a scale per 32 inputs rather than per row (one kernel call
# per group: ~1 ms a token more at batch 1). On SmolLM2 under int4, an int4 head or a per-row int8
# head gives ~6x or 1.5x the mean |delta log-prob| vs fp32 of this one (0.02).
INT4_LM_HEAD = "int8"
LM_HEAD_INT8_GROUP_SIZE: int | None = 32
# The packed CPU kernels are vectorized for bfloat16 activations only (float32 and float16 take a
# scalar path 10-20x slower), so on CPU activations are rounded to bfloat16 at each quantized linear
# (accumulation stays float32 inside the kernel; its output is bfloat16, cast back to the model dtype).
CPU_COMPUTE_DTYPE = torch.bfloat16

_SMALL_BATCH = contextvars.ContextVar("tandem_small_batch_kernels", default=False)


@contextlib.contextmanager
def small_batch_kernels() -> Iterator[None]:
    """Within it, quantized linears run their small-batch kernels on inputs of up to
    ``cpu_ext.SMALL_BATCH_ROWS`` rows (``ModelRunner`` enters it for decode-only steps, as the
    compiled decode step runs them). Outside it (prompts, steps that mix prompt chunks and decode
    tokens) the packed kernels run, whose results do not depend on how a prompt is chunked or how
    much of it was cached."""
    token = _SMALL_BATCH.set(True)
    try:
        yield
    finally:
        _SMALL_BATCH.reset(token)


@dataclass(frozen=True)
class Int8Weight:
    """Symmetric int8: ``codes`` int8 [N, K]; ``scales`` [N] (one per output channel) or, with a
    ``group_size``, [K // group_size, N]; ``w = code * scale``."""

    codes: torch.Tensor
    scales: torch.Tensor
    group_size: int | None = None

    def dequantize(self) -> torch.Tensor:
        n, k = self.codes.shape
        if self.group_size is None:
            return self.codes.to(self.scales.dtype) * self.scales[:, None]
        codes = self.codes.to(self.scales.dtype).view(n, k // self.group_size, self.group_size)
        return (codes * self.scales.t()[..., None]).view(n, k)


@dataclass(frozen=True)
class Int4Weight:
    """Group-wise asymmetric int4: ``codes`` uint8 [N, K] with values in [0, 15], ``scales_zeros``
    [K // group_size, N, 2] (scale, zero); ``w = (code - 8) * scale + zero``."""

    codes: torch.Tensor
    scales_zeros: torch.Tensor
    group_size: int

    def dequantize(self) -> torch.Tensor:
        n, k = self.codes.shape
        scale, zero = self.scales_zeros.unbind(-1)  # each [K // group, N]
        codes = self.codes.to(scale.dtype).view(n, k // self.group_size, self.group_size) - 8
        return (codes * scale.t()[..., None] + zero.t()[..., None]).view(n, k)


def _check_groups(in_features: int, group_size: int) -> None:
    if in_features % group_size:
        raise ValueError(f"in_features {in_features} is not a multiple of the group size {group_size}")


def quantize_int8(
    weight: torch.Tensor, group_size: int | None = None, dtype: torch.dtype | None = None
) -> Int8Weight:
    """Round-to-nearest symmetric int8 of a [N, K] weight: one scale (max |w| / 127, stored in
    ``dtype``, default the weight's) per row, or per ``group_size`` inputs of a row. Codes are
    rounded against the stored scales, so that ``dequantize`` is what the codes mean."""
    n, k = weight.shape
    group = k if group_size is None else group_size
    _check_groups(k, group)
    w = weight.detach().float().view(n, k // group, group)
    scales = (w.abs().amax(dim=-1) / 127).to(dtype or weight.dtype).float()
    scales = scales.clamp(min=torch.finfo(torch.float32).tiny)
    codes = torch.round(w / scales[..., None]).clamp(-127, 127).to(torch.int8).view(n, k)
    scales = scales.to(dtype or weight.dtype)
    if group_size is None:
        return Int8Weight(codes, scales.view(n))
    return Int8Weight(codes, scales.t().contiguous(), group_size)


def quantize_int4(
    weight: torch.Tensor, group_size: int = INT4_GROUP_SIZE, dtype: torch.dtype | None = None
) -> Int4Weight:
    """Round-to-nearest min/max int4 of a [N, K] weight per group of ``group_size`` along K: each
    group's range maps onto codes 0..15. Scales and zeros are stored in ``dtype`` (default the
    weight's) and codes rounded against the stored values."""
    n, k = weight.shape
    _check_groups(k, group_size)
    w = weight.detach().float().view(n, k // group_size, group_size)
    lo, hi = w.amin(dim=-1), w.amax(dim=-1)
    dtype = dtype or weight.dtype
    scale = ((hi - lo) / 15).clamp(min=torch.finfo(torch.float32).tiny).to(dtype).float()
    zero = (lo + 8 * scale).to(dtype).float()
    codes = torch.round((w - (zero - 8 * scale)[..., None]) / scale[..., None]).clamp(0, 15)
    scales_zeros = torch.stack([scale, zero], dim=-1).transpose(0, 1).contiguous().to(dtype)
    return Int4Weight(codes.to(torch.uint8).view(n, k), scales_zeros, group_size)


def int4_fits(out_features: int, in_features: int, group_size: int = INT4_GROUP_SIZE) -> bool:
    """Whether the CPU int4 kernel takes a [out_features, in_features] weight."""
    return out_features % INT4_N_MULTIPLE == 0 and in_features % group_size == 0


class _QuantizedLinear(nn.Module):
    """``y = x @ W.T + bias`` with W kept quantized. ``packed``: the CPU kernel computes it, on
    activations rounded to ``CPU_COMPUTE_DTYPE``; else W is dequantized and multiplied in the
    activations' dtype (exact to float rounding: the tests' reference path)."""

    def __init__(self, out_features: int, in_features: int, bias: torch.Tensor | None, packed: bool) -> None:
        super().__init__()
        self.out_features, self.in_features, self.packed = out_features, in_features, packed
        self.bias = None if bias is None else nn.Parameter(bias.detach(), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features)
        if self.packed:
            out = self._few_rows(rows) if _SMALL_BATCH.get() else None
            if out is None:
                out = self._packed_mm(rows.to(CPU_COMPUTE_DTYPE).contiguous()).to(x.dtype)
            out = out if self.bias is None else out + self.bias
        else:
            out = F.linear(rows, self.dequantize().to(x.dtype), self.bias)
        return out.view(*x.shape[:-1], self.out_features)

    def _packed_mm(self, rows: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def one_row_kernel(self) -> LinearKernel | None:
        """This linear as the compiled decode step takes it (``kernels.decode_step``): what
        ``_few_rows`` computes, or None where it has no such kernel."""
        return None

    def _few_rows(self, rows: torch.Tensor) -> torch.Tensor | None:
        """The product by a kernel of its own for the few rows of a small decode-only step (within
        :func:`small_batch_kernels`), or None: ``_packed_mm`` (more rows, or no such kernel)."""
        return None

    def dequantize(self) -> torch.Tensor:
        raise NotImplementedError


class Int8Linear(_QuantizedLinear):
    """The weight as int8 codes (per-channel, or per group of inputs: one kernel call per group)."""

    def __init__(self, weight: Int8Weight, bias: torch.Tensor | None, packed: bool) -> None:
        super().__init__(*weight.codes.shape, bias, packed)
        self.group_size = weight.group_size
        group = self.in_features if weight.group_size is None else weight.group_size
        if packed and group % INT8_K_MULTIPLE:
            raise ValueError(
                f"the packed int8 kernel needs inputs per scale % {INT8_K_MULTIPLE} == 0, got {group}"
            )
        codes = weight.codes.view(self.out_features, -1, group).transpose(0, 1)  # [groups, N, group]
        self.register_buffer("codes", codes.contiguous())
        scales = weight.scales.view(-1, self.out_features)  # [groups, N]
        self.register_buffer("scales", scales.to(CPU_COMPUTE_DTYPE if packed else scales.dtype))

    def dequantize(self) -> torch.Tensor:
        codes = self.codes.transpose(0, 1).reshape(self.out_features, self.in_features)
        scales = self.scales.view(self.out_features) if self.group_size is None else self.scales
        return Int8Weight(codes, scales, self.group_size).dequantize()

    def _few_rows(self, rows: torch.Tensor) -> torch.Tensor | None:
        # up to cpu_ext.SMALL_BATCH_ROWS rows, float32 activations (not rounded to bf16), each 8
        # codes widened once for every row; at one row ~0.6 of the packed kernel's time on weights
        # streamed from memory (kernels/cpu/int8_gemv.c); None: the packed kernel runs
        return cpu_ext.int8_gemv(rows, self.codes, self.scales)

    def one_row_kernel(self) -> LinearKernel | None:
        if not self.packed or not cpu_ext.gemv_available():
            return None
        return LinearKernel("int8", self.codes, self.out_features, self.in_features, self.scales, self.bias)

    def _packed_mm(self, rows: torch.Tensor) -> torch.Tensor:
        num_groups, _, group = self.codes.shape
        out = torch.ops.aten._weight_int8pack_mm(rows[:, :group].contiguous(), self.codes[0], self.scales[0])
        if num_groups == 1:
            return out
        out = out.float()
        for g in range(1, num_groups):
            part = rows[:, g * group : (g + 1) * group].contiguous()
            out += torch.ops.aten._weight_int8pack_mm(part, self.codes[g], self.scales[g])
        return out


class Int4Linear(_QuantizedLinear):
    """The weight as int4 codes: in the CPU kernel's packed layout when ``packed``, else two codes a
    byte (low nibble first)."""

    def __init__(self, weight: Int4Weight, bias: torch.Tensor | None, packed: bool) -> None:
        super().__init__(*weight.codes.shape, bias, packed)
        self.group_size = weight.group_size
        if packed:
            codes = torch.ops.aten._convert_weight_to_int4pack_for_cpu(weight.codes.to(torch.int32), 1)
        else:
            codes = weight.codes[:, 0::2] | (weight.codes[:, 1::2] << 4)
        self.register_buffer("codes", codes.contiguous())
        sz = weight.scales_zeros
        self.register_buffer("scales_zeros", sz.to(CPU_COMPUTE_DTYPE if packed else sz.dtype).contiguous())
        # a small decode batch reads every weight once a step: the int4 GEMV (16-bit integer
        # activations, kernels/cpu/int4_gemv.c) reads these rows at ~1.7x the packed kernel's speed,
        # at the cost of keeping the codes twice (packed for larger batches and prefill, rows for
        # up to 8 tokens: 0.625 bytes a weight each; the packed layout cannot be read back here)
        rows = cpu_ext.int4_gemv_pack(weight.codes, self.scales_zeros) if packed else None
        self.gemv_rows = rows  # not a buffer: derived from the codes, never saved

    def dequantize(self) -> torch.Tensor:
        """The weight [N, K]; not for ``packed`` (that layout is the kernel's own, per CPU)."""
        assert not self.packed, "the CPU-packed int4 layout is not unpacked here"
        codes = torch.stack([self.codes & 0xF, self.codes >> 4], dim=-1).view(self.out_features, -1)
        return Int4Weight(codes, self.scales_zeros, self.group_size).dequantize()

    def _few_rows(self, rows: torch.Tensor) -> torch.Tensor | None:
        # up to cpu_ext.SMALL_BATCH_ROWS rows, each rounded to 16-bit integers per group of 32, times
        # the 4-bit codes read once (see kernels.reference.int4_gemv); None: the packed kernel runs
        # (on bf16 activations)
        return None if self.gemv_rows is None else cpu_ext.int4_gemv(rows, self.gemv_rows)

    def one_row_kernel(self) -> LinearKernel | None:
        if self.gemv_rows is None:
            return None
        return LinearKernel("int4", self.gemv_rows, self.out_features, self.in_features, None, self.bias)

    def _packed_mm(self, rows: torch.Tensor) -> torch.Tensor:
        return torch.ops.aten._weight_int4pack_mm_for_cpu(
            rows, self.codes, self.group_size, self.scales_zeros
        )


def quantize_linear(linear: nn.Linear, method: str, int8_group_size: int | None = None) -> nn.Module:
    """A quantized copy of ``linear`` on its device: packed for the CPU kernels where they take it
    (scales in ``CPU_COMPUTE_DTYPE``), else dequantize-and-multiply (scales in the weight's dtype).
    An int4 request for a shape the int4 kernel cannot take (see :func:`int4_fits`) gives int8."""
    weight, bias = linear.weight.detach(), linear.bias
    on_cpu = weight.device.type == "cpu"
    if method == "int4" and int4_fits(*weight.shape):
        dtype = CPU_COMPUTE_DTYPE if on_cpu else weight.dtype
        return Int4Linear(quantize_int4(weight, dtype=dtype), bias, on_cpu)
    if method in QUANTIZATIONS:
        packed = on_cpu and weight.shape[1] % INT8_K_MULTIPLE == 0
        dtype = CPU_COMPUTE_DTYPE if packed else weight.dtype
        return Int8Linear(quantize_int8(weight, int8_group_size, dtype), bias, packed)
    raise ValueError(f"quantization must be one of {list(QUANTIZATIONS)}, got {method!r}")


def linear_from(
    weight: Int4Weight | Int8Weight, bias: torch.Tensor | None, device: torch.device
) -> nn.Module:
    """The quantized linear of an already quantized ``weight`` (a GGUF's own blocks, see
    ``engine.gguf_blocks``), packed for the CPU kernels on CPU."""
    on_cpu = device.type == "cpu"
    weight = type(weight)(
        **{k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in vars(weight).items()}
    )
    if isinstance(weight, Int4Weight):
        return Int4Linear(weight, bias, on_cpu and int4_fits(*weight.codes.shape, weight.group_size))
    group = weight.group_size or weight.codes.shape[1]
    return Int8Linear(weight, bias, on_cpu and group % INT8_K_MULTIPLE == 0)


@torch.no_grad()
def quantize_model(
    model: nn.Module, method: str, quantized: dict[str, Int4Weight | Int8Weight] | None = None
) -> int:
    """Replace every ``nn.Linear`` in ``model`` with its quantized copy, in place. The top-level
    ``lm_head`` gets ``INT4_LM_HEAD`` under int4, and int8 groups of ``LM_HEAD_INT8_GROUP_SIZE``
    inputs. Embeddings are not linears and stay as they are (a tied LM head gets a quantized copy of
    the shared weight). ``quantized``: weights already quantized, by module path, taken as they are
    (``engine.gguf_blocks``: the caller checked them against the float weights); returns how many were."""
    quantized = quantized or {}
    taken = 0
    for prefix, module in list(model.named_modules()):
        for name, child in list(module.named_children()):
            if not isinstance(child, nn.Linear):
                continue
            path = f"{prefix}.{name}" if prefix else name
            if path in quantized:
                setattr(module, name, linear_from(quantized[path], child.bias, child.weight.device))
                taken += 1
                continue
            if prefix or name != "lm_head":
                setattr(module, name, quantize_linear(child, method))
                continue
            group = LM_HEAD_INT8_GROUP_SIZE
            group = group if group and child.in_features % group == 0 else None
            setattr(module, name, quantize_linear(child, INT4_LM_HEAD if method == "int4" else method, group))
    return taken
