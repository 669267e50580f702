"""Triton kernels for the hot operations, one small file per operation family.

Each module holds ``@triton.jit`` kernels beside the launcher that validates shapes, dtypes and
strides before launching them. The modules import triton at the top, so import them lazily (as
:mod:`kernels.triton_ops` does): importing triton needs no GPU, but launching a kernel needs CUDA,
or ``TRITON_INTERPRET=1`` (CPU tensors) set before these modules are imported: ``@triton.jit``
reads it when it decorates a kernel.
"""
