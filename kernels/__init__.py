"""Hot operations of the engine behind one dispatch point.

Every operation has a PyTorch implementation in :mod:`kernels.reference` (the CPU path, and the
reference the Triton kernels are tested against). :func:`backend_for` picks the implementation for a
tensor's device: Triton on CUDA once ``kernels.triton_ops`` provides the operation, on CPU the
compiled C kernels of :mod:`kernels.cpu_ext` where they exist (they fall back to the reference by
themselves), PyTorch elsewhere. Triton is imported lazily so that importing this package never needs
a GPU driver.
"""

from __future__ import annotations

import functools
import importlib
from types import ModuleType, SimpleNamespace

import torch

from kernels import reference

OPS = (
    "rms_norm",
    "rope",
    "silu_and_mul",
    "write_kv",
    "paged_decode_attention",
    "prefill_attention",
    "pack_pages",
    "unpack_pages",
)
# Operations with a compiled CPU kernel and no Triton one: on a GPU the reference's few elementwise
# passes over the KV (once per hand-off or store chunk) are left to PyTorch.
CPU_OPS = ("kv_int8_encode", "kv_int8_decode")


@functools.cache
def _triton_module() -> ModuleType | None:
    try:
        return importlib.import_module("kernels.triton_ops")
    except ImportError:
        return None


@functools.cache
def _backend(device_type: str) -> SimpleNamespace:
    fast = {"cuda": _triton_module, "cpu": _cpu_module}.get(device_type, lambda: None)()
    return SimpleNamespace(**{op: getattr(fast, op, None) or getattr(reference, op) for op in OPS + CPU_OPS})


@functools.cache
def _cpu_module() -> ModuleType | None:
    return importlib.import_module("kernels.cpu_ext")


def backend_for(device: torch.device | str) -> SimpleNamespace:
    """The implementations of :data:`OPS` and :data:`CPU_OPS` for ``device``: Triton on CUDA where
    it has the op, the compiled kernels on CPU, else PyTorch."""
    return _backend(torch.device(device).type)


def __getattr__(name: str):
    # kernels.rms_norm(...) etc. resolve to the reference; the engine binds per-device backends.
    if name in OPS + CPU_OPS:
        return getattr(reference, name)
    raise AttributeError(f"module 'kernels' has no attribute {name!r}")
