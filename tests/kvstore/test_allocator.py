"""The glibc allocator settings the engine's and the store node's processes make: every value must
reach mallopt as the C int it takes (4 GiB as a trim threshold arrived as 0, "trim at every free",
the opposite of what was meant, until this test)."""

from __future__ import annotations

import sys
from unittest import mock

import pytest

from engine import memory
from kvstore import node_main

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
C_INT_MAX = 2**31 - 1


class _Libc:
    def __init__(self) -> None:
        self.calls: dict[int, int] = {}

    def mallopt(self, param, value) -> int:
        self.calls[param] = value
        return 1


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
@pytest.mark.parametrize(
    "module, tune", [(memory, "tune_host_allocator"), (node_main, "keep_received_frames_warm")]
)
def test_allocator_thresholds_fit_a_c_int_and_keep_freed_memory(module, tune):
    libc = _Libc()
    with mock.patch.object(module.ctypes, "CDLL", return_value=libc):
        getattr(module, tune)()
    assert set(libc.calls) == {M_TRIM_THRESHOLD, M_MMAP_THRESHOLD}
    assert all(0 < v <= C_INT_MAX for v in libc.calls.values()), libc.calls
    assert libc.calls[M_MMAP_THRESHOLD] >= 1 << 20  # a 1 MiB frame or activation comes from the heap
    assert libc.calls[M_TRIM_THRESHOLD] >= 2 * libc.calls[M_MMAP_THRESHOLD]  # and its memory stays
