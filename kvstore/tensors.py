"""Chunks ⇄ wire buffers: tensors go out without a copy and come back as views of received frames."""

from __future__ import annotations

from typing import Any

import torch

from transfer.messages import DTYPE_ITEMSIZE, Buffer


def to_buffer(chunk: Any) -> Buffer:
    """A tensor (any dtype; moved to CPU and made contiguous if needed), a numpy array, or any
    bytes-like object, as a ``Buffer`` that remembers its dtype and shape; a ``Buffer`` as it is
    (with the checksum its producer gave it, if any)."""
    if isinstance(chunk, Buffer):
        return chunk
    if isinstance(chunk, torch.Tensor):
        tensor = chunk.detach().to("cpu").contiguous()
        dtype = str(tensor.dtype).removeprefix("torch.")
        if dtype not in DTYPE_ITEMSIZE:
            raise ValueError(f"cannot store a {tensor.dtype} tensor; supported: {sorted(DTYPE_ITEMSIZE)}")
        data = tensor.reshape(-1).view(torch.uint8).numpy()  # numpy exports the buffer protocol
        return Buffer(data, dtype, tuple(tensor.shape))
    dtype = getattr(chunk, "dtype", None)
    if dtype is not None and str(dtype) in DTYPE_ITEMSIZE:  # numpy array
        return Buffer(chunk, str(dtype), tuple(chunk.shape))
    try:
        return Buffer.raw(chunk)
    except TypeError:
        raise ValueError(
            f"a chunk must be a tensor or a bytes-like object, got {type(chunk).__name__}"
        ) from None


def nbytes(tensors: Any) -> int:
    """Bytes of the data of these tensors."""
    return sum(t.numel() * t.element_size() for t in tensors)


def to_tensor(buffer: Buffer) -> torch.Tensor:
    """The tensor a buffer describes, sharing its memory (the received frame) without a copy."""
    dtype = getattr(torch, buffer.dtype)
    if buffer.nbytes == 0:
        return torch.empty(buffer.shape, dtype=dtype)
    return torch.frombuffer(buffer.data, dtype=torch.uint8).view(dtype).reshape(buffer.shape)
