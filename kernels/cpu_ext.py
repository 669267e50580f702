"""Compiled CPU kernels: small C files built once with the machine's C compiler, loaded with ctypes.

``kernels/cpu/decode_attention.c``: paged decode attention reading K and V in place in their
pages; ``kernels/cpu/norm_act.c``: RMSNorm with the residual add fused in, and SiLU(gate) * up;
``kernels/cpu/rope.c``: the rotary embedding of q and k in one call;
``kernels/cpu/kv_int8.c``: KV vectors to int8 with a scale each and back (``--kv-dtype int8``);
``kernels/cpu/kv_pages.c``: new K and V rows into their cache slots;
``kernels/cpu/int8_gemv.c``: up to 8 rows times an int8 weight with bf16 scales (small-batch
decode of ``--quantization int8`` and of the int8 LM head);
``kernels/cpu/int4_gemv.c``: up to 8 rows times a group-wise int4 weight, each row rounded to
16-bit integers per group (small-batch decode of ``--quantization int4``);
``kernels/cpu/decode_step.c``: a decode step of up to 8 tokens through every decoder layer in one
call, on the kernels above (``kernels.decode_step.FusedDecoder``).
Each has its PyTorch reference in ``kernels.reference`` (the tests' oracle and the fallback).

Why not a torch C++ extension: building one against torch's headers takes minutes on a small
machine, and these kernels need nothing of torch but pointers. A C file compiles in about a second
(``-O3 -march=native -fopenmp``: the build is for the machine that runs it). Linked with
``-fopenmp``, the library needs ``libgomp.so.1``, which resolves to the one torch already loaded,
so a kernel's parallel loops run on torch's threads and follow ``torch.set_num_threads``.

Where the library goes: ``$TANDEM_CACHE_DIR/kernels`` (default ``~/.cache/tandem/kernels``), named
by a hash of the source, the flags and the compiler, so an edit or another compiler rebuilds it.
``make setup`` builds it (``python -m kernels.cpu_ext``); an engine that finds it missing builds it
on first use. With no compiler, or a build that fails, the engine runs the PyTorch reference and
says so once in its log. ``TANDEM_CPU_KERNELS=0`` turns the compiled kernels off.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import torch

from kernels import reference

log = logging.getLogger("tandem.kernels")

SOURCES = tuple(
    Path(__file__).resolve().parent / "cpu" / name
    for name in (
        "decode_attention.c",
        "norm_act.c",
        "rope.c",
        "kv_int8.c",
        "kv_pages.c",
        "int8_gemv.c",
        "int4_gemv.c",
        "decode_step.c",
    )
)
HEADERS = (Path(__file__).resolve().parent / "cpu" / "vec_math.h",)  # included, hashed with the sources
FLAGS = ("-O3", "-march=native", "-fopenmp", "-shared", "-fPIC", "-std=c11")
_I64, _F32P, _I32P = ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p


def _compiler() -> str | None:
    return os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")


def library_path(compiler: str) -> Path:
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True).stdout
    sources = b"".join(source.read_bytes() for source in SOURCES + HEADERS)
    digest = hashlib.sha256(sources + " ".join(FLAGS).encode() + version.encode()).hexdigest()[:16]
    root = Path(os.environ.get("TANDEM_CACHE_DIR") or Path.home() / ".cache" / "tandem")
    return root / "kernels" / f"tandem-cpu-{digest}.so"


def build() -> Path:
    """Compile the kernels (if not built yet) and return the library's path; raises with the
    compiler's message when that fails."""
    compiler = _compiler()
    if compiler is None:
        raise RuntimeError("no C compiler (cc or gcc, or $CC) on PATH")
    path = library_path(compiler)
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(f".{os.getpid()}.tmp")
    done = subprocess.run(
        [compiler, *FLAGS, *map(str, SOURCES), "-o", str(partial), "-lm"], capture_output=True, text=True
    )
    if done.returncode != 0:
        partial.unlink(missing_ok=True)
        raise RuntimeError(
            f"{compiler} failed on {', '.join(s.name for s in SOURCES)}:\n{done.stderr.strip()}"
        )
    os.replace(partial, path)  # atomic: a concurrent build of the same source writes the same bytes
    return path


@functools.cache
def library() -> ctypes.CDLL | None:
    if os.environ.get("TANDEM_CPU_KERNELS", "1") == "0":
        return None
    try:
        lib = ctypes.CDLL(str(build()))
    except (OSError, RuntimeError) as e:
        log.warning("compiled CPU kernels unavailable, using the PyTorch reference: %s", e)
        return None
    log.info("compiled CPU kernels loaded from %s", lib._name)
    fn = lib.tandem_paged_decode_attention
    fn.restype = ctypes.c_int
    fn.argtypes = [_F32P, _F32P, _F32P, _I32P, _I32P, _F32P, *[_I64] * 8, ctypes.c_float, _I64]
    lib.tandem_rms_norm.restype = None
    lib.tandem_rms_norm.argtypes = [*[_F32P] * 5, _I64, _I64, ctypes.c_float]
    lib.tandem_silu_and_mul.restype = None
    lib.tandem_silu_and_mul.argtypes = [_F32P, _F32P, _I64, _I64]
    lib.tandem_rope.restype = None
    lib.tandem_rope.argtypes = [*[_F32P] * 7, *[_I64] * 8]
    lib.tandem_int8_gemm.restype = ctypes.c_int
    lib.tandem_int8_gemm.argtypes = [_F32P, _I64, *[_F32P] * 3, *[_I64] * 3]
    lib.tandem_int4_gemm.restype = ctypes.c_int
    lib.tandem_int4_gemm.argtypes = [_F32P, _I64, _F32P, _F32P, _I64, _I64]
    lib.tandem_int4_pack.restype = ctypes.c_int64
    lib.tandem_int4_pack.argtypes = [*[_F32P] * 4, _I64, _I64]
    lib.tandem_gemv_compiled.restype = ctypes.c_int
    lib.tandem_gemv_compiled.argtypes = []
    lib.tandem_write_kv.restype = ctypes.c_int64
    lib.tandem_write_kv.argtypes = [*[_F32P] * 5, *[_I64] * 9]
    for name in ("tandem_kv_int8_encode", "tandem_kv_int8_decode"):
        getattr(lib, name).restype = None
        getattr(lib, name).argtypes = [_F32P, _F32P, _I64, _I64]
    return lib


def gemv_available() -> bool:
    """Whether the small-batch int4 / int8 kernels were compiled (they need AVX2 and FMA; elsewhere
    the packed PyTorch kernels serve every batch)."""
    lib = library()
    return lib is not None and bool(lib.tandem_gemv_compiled())


def available() -> bool:
    return library() is not None


def paged_decode_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    context_lens: torch.Tensor,
    scale: float,
    sliding_window: int | None = None,
) -> torch.Tensor:
    """``kernels.reference.paged_decode_attention``, compiled where it applies, else the reference."""
    args = (q, k_cache, v_cache, block_tables, context_lens, scale, sliding_window)
    out = compiled_paged_decode_attention(*args)
    return out if out is not None else reference.paged_decode_attention(*args)


def compiled_paged_decode_attention(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    block_tables: torch.Tensor,
    context_lens: torch.Tensor,
    scale: float,
    sliding_window: int | None = None,
) -> torch.Tensor | None:
    """``kernels.reference.paged_decode_attention``, reading the pages in place; None where this
    kernel does not apply (not float32 on CPU, an unusual layout, no compiled library)."""
    lib = library()
    if lib is None or not _applies(q, k_cache, v_cache):
        return None
    batch, num_heads, head_dim = q.shape
    num_kv_heads, _, page_size, _ = k_cache.shape
    q = q.contiguous()
    tables = block_tables.to(torch.int32).contiguous()
    lens = context_lens.to(torch.int32).contiguous()
    out = torch.empty_like(q)
    status = lib.tandem_paged_decode_attention(
        q.data_ptr(), k_cache.data_ptr(), v_cache.data_ptr(), tables.data_ptr(), lens.data_ptr(), out.data_ptr(),
        batch, num_heads, num_kv_heads, head_dim, page_size, k_cache.stride(0), k_cache.stride(1),
        tables.stride(0) if tables.dim() == 2 and tables.shape[0] else 0, scale, sliding_window or 0,
    )  # fmt: skip
    if status != 0:
        raise MemoryError("paged decode attention could not allocate its scratch")
    return out


def rms_norm(
    x: torch.Tensor, weight: torch.Tensor, eps: float, residual: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``kernels.reference.rms_norm`` (the residual add fused in) in one pass per row, compiled;
    the reference where it does not apply (not float32 on CPU, or no compiled library)."""
    lib = library()
    tensors = (x, weight) if residual is None else (x, weight, residual)
    if lib is None or not cpu_float32(*tensors):
        return reference.rms_norm(x, weight, eps, residual)
    x, weight = x.contiguous(), weight.contiguous()
    out = torch.empty_like(x)
    if residual is None:
        new_residual, res_ptr, new_ptr = x, None, None
    else:
        residual = residual.contiguous()
        new_residual = torch.empty_like(x)
        res_ptr, new_ptr = residual.data_ptr(), new_residual.data_ptr()
    dim = x.shape[-1]
    lib.tandem_rms_norm(
        x.data_ptr(), res_ptr, new_ptr, out.data_ptr(), weight.data_ptr(), x.numel() // dim, dim, eps
    )
    return out, new_residual


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    """``kernels.reference.silu_and_mul`` in one pass, compiled; the reference where it does not apply."""
    lib = library()
    if lib is None or not cpu_float32(x) or x.shape[-1] % 2:
        return reference.silu_and_mul(x)
    x = x.contiguous()
    inter = x.shape[-1] // 2
    out = torch.empty((*x.shape[:-1], inter), dtype=x.dtype)
    lib.tandem_silu_and_mul(x.data_ptr(), out.data_ptr(), x.numel() // (2 * inter), inter)
    return out


def rope(
    q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``kernels.reference.rope`` for q and k in one call, each (token, head) row in one pass,
    compiled, the same bit for bit; the reference where it does not apply (not float32 on CPU, rows
    not contiguous, an odd head size, or no compiled library)."""
    lib = library()
    if (
        lib is None
        or not cpu_float32(q, k, cos, sin)
        or q.stride(-1) != 1
        or k.stride(-1) != 1
        or q.shape[-1] % 2
        or q.shape[0] != k.shape[0]
        or q.shape[-1] != k.shape[-1]
    ):
        return reference.rope(q, k, positions, cos, sin)
    cos, sin = cos.contiguous(), sin.contiguous()
    positions = positions.to(torch.int64).contiguous()
    q_out, k_out = torch.empty(q.shape, dtype=q.dtype), torch.empty(k.shape, dtype=k.dtype)
    lib.tandem_rope(
        q.data_ptr(), k.data_ptr(), q_out.data_ptr(), k_out.data_ptr(), positions.data_ptr(), cos.data_ptr(),
        sin.data_ptr(), q.shape[0], q.shape[1], k.shape[1], q.shape[2], q.stride(0), q.stride(1), k.stride(0),
        k.stride(1),
    )  # fmt: skip
    return q_out, k_out


def write_kv(
    k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, slots: torch.Tensor
) -> None:
    """``kernels.reference.write_kv``, one copy per (token, head) row, compiled; the reference where
    it does not apply (not float32 on CPU, rows or cache pages not contiguous, caches laid out
    differently, slots not int64). A slot past the cache raises ``IndexError`` as the reference's
    indexing does (a negative one is padding, skipped, as in the Triton kernel)."""
    lib = library()
    if (
        lib is None
        or not cpu_float32(k, v, k_cache, v_cache)
        or slots.device.type != "cpu"
        or slots.dtype != torch.int64
        or k.dim() != 3
        or k_cache.dim() != 4
        or k.shape != v.shape
        or k.stride(-1) != 1
        or v.stride(-1) != 1
        or k_cache.stride() != v_cache.stride()
        or k_cache.shape != v_cache.shape
        or k_cache.shape[0] != k.shape[1]
        or k_cache.shape[3] != k.shape[2]
        or k_cache.stride(3) != 1
        or k_cache.stride(2) != k_cache.shape[3]
        or k_cache.stride(1) != k_cache.shape[2] * k_cache.shape[3]
        or slots.shape != (k.shape[0],)
    ):
        return reference.write_kv(k, v, k_cache, v_cache, slots)
    slots = slots.contiguous()
    num_kv_heads, num_pages, page_size, head_dim = k_cache.shape
    capacity = num_pages * page_size
    bad = lib.tandem_write_kv(
        k.data_ptr(), v.data_ptr(), k_cache.data_ptr(), v_cache.data_ptr(), slots.data_ptr(), k.shape[0],
        num_kv_heads, head_dim, k.stride(0), k.stride(1), v.stride(0), v.stride(1), k_cache.stride(0), capacity,
    )  # fmt: skip
    if bad:
        raise IndexError(
            f"slot {int(slots[bad - 1])} of token {bad - 1} is past the cache's {capacity} slots"
        )


SMALL_BATCH_ROWS = 8  # rows one int8_gemv / int4_gemv call takes (TANDEM_INT8/INT4_MAX_ROWS in the C)


def small_float32_batch(x: torch.Tensor) -> bool:
    """Whether ``x`` is the activations the small-batch kernels take: float32 on CPU, [1..8, K]."""
    return cpu_float32(x) and x.dim() == 2 and 1 <= x.shape[0] <= SMALL_BATCH_ROWS


def int8_weight_fits(codes: torch.Tensor, scales: torch.Tensor, in_features: int) -> bool:
    """Whether ``codes`` / ``scales`` are an int8 weight of ``in_features`` inputs as
    :func:`int8_gemv` reads it: int8 [groups, n, group] with group % 8 == 0, bf16 [groups, n]."""
    return (
        codes.dtype == torch.int8
        and codes.dim() == 3
        and scales.dtype == torch.bfloat16
        and scales.shape == codes.shape[:2]
        and in_features == codes.shape[0] * codes.shape[2]
        and codes.shape[2] % 8 == 0
        and codes.is_contiguous()
        and scales.is_contiguous()
    )


def int4_rows_fit(packed: torch.Tensor, in_features: int) -> bool:
    """Whether ``packed`` is an int4 weight of ``in_features`` inputs as :func:`int4_gemv_pack` lays
    it out: uint8 [n, K // 2 + K // 8], K a multiple of 64."""
    k = in_features
    return (
        packed.dtype == torch.uint8
        and packed.dim() == 2
        and k % 64 == 0
        and packed.shape[1] == k // 2 + k // 8
        and packed.is_contiguous()
    )


def int8_gemv(x: torch.Tensor, codes: torch.Tensor, scales: torch.Tensor) -> torch.Tensor | None:
    """``x [M, groups * group] @ W.T`` for ``W[n, g * group + k] = codes[g, n, k] * scales[g, n]``
    (the layout ``engine.quant.Int8Linear`` keeps), M <= 8, float32 in and out, bf16 scales; a row's
    result does not depend on the others. None where this kernel does not apply (more rows, not
    float32 activations on CPU, int8 codes and bf16 scales of those shapes, a group not a multiple
    of 8, no AVX2 build, or no compiled library)."""
    lib = library()
    if lib is None or not small_float32_batch(x) or not int8_weight_fits(codes, scales, x.shape[1]):
        return None
    groups, n, group = codes.shape
    x = x.contiguous()
    out = torch.empty((x.shape[0], n), dtype=torch.float32)
    status = lib.tandem_int8_gemm(
        x.data_ptr(), x.shape[0], codes.data_ptr(), scales.data_ptr(), out.data_ptr(), n, groups, group
    )
    return out if status == 0 else None


def int4_gemv_pack(codes: torch.Tensor, scales_zeros: torch.Tensor) -> torch.Tensor | None:
    """The row layout :func:`int4_gemv` reads (``kernels/cpu/int4_gemv.c``) of a group-wise int4
    weight: ``codes`` uint8 [N, K] in 0..15, ``scales_zeros`` bf16 [K // 32, N, 2] (groups of 32, as
    ``engine.quant.Int4Weight``); uint8 [N, K // 2 + K // 8]. None where the kernel does not apply
    (another group size or dtype, K not a multiple of 64, no AVX2 build, or no compiled library)."""
    lib = library()
    if (
        not gemv_available()
        or codes.device.type != "cpu"
        or codes.dtype != torch.uint8
        or codes.dim() != 2
        or scales_zeros.dtype != torch.bfloat16
        or codes.shape[1] % 64
        or scales_zeros.shape != (codes.shape[1] // 32, codes.shape[0], 2)
    ):
        return None
    n, k = codes.shape
    codes = codes.contiguous()
    scales, zeros = (t.contiguous() for t in scales_zeros.unbind(-1))
    out = torch.empty((n, k // 2 + k // 8), dtype=torch.uint8)
    status = lib.tandem_int4_pack(codes.data_ptr(), scales.data_ptr(), zeros.data_ptr(), out.data_ptr(), n, k)
    return out if status == 0 else None


def int4_gemv(x: torch.Tensor, packed: torch.Tensor) -> torch.Tensor | None:
    """``x [M, K] @ W.T`` for the int4 weight ``packed`` by :func:`int4_gemv_pack`, M <= 8, each row
    of x rounded to 16-bit integers per group of 32 (``kernels.reference.int4_gemv`` says exactly
    what is computed; a row's result does not depend on the others); float32 in and out. None where
    the kernel does not apply (more rows, not float32 on CPU, no AVX2 build, no compiled library)."""
    lib = library()
    if lib is None or not small_float32_batch(x) or not int4_rows_fit(packed, x.shape[1]):
        return None
    x = x.contiguous()
    rows, n = x.shape[0], packed.shape[0]
    out = torch.empty((rows, n), dtype=torch.float32)
    status = lib.tandem_int4_gemm(x.data_ptr(), rows, packed.data_ptr(), out.data_ptr(), n, x.shape[1])
    if status == -1:
        raise MemoryError("int4 GEMV could not allocate its scratch")
    return out if status == 0 else None


def kv_int8_encode(x: torch.Tensor) -> torch.Tensor:
    """``kernels.reference.kv_int8_encode`` in one pass, compiled; the reference where it does not
    apply (not float32 on CPU, or no compiled library)."""
    lib = library()
    if lib is None or not cpu_float32(x):
        return reference.kv_int8_encode(x)
    x = x.contiguous()
    dim = x.shape[-1]
    out = torch.empty((*x.shape[:-1], dim + 4), dtype=torch.int8)
    lib.tandem_kv_int8_encode(x.data_ptr(), out.data_ptr(), x.numel() // dim if dim else 0, dim)
    return out


def kv_int8_decode(encoded: torch.Tensor) -> torch.Tensor:
    """``kernels.reference.kv_int8_decode`` in one pass, compiled; the reference where it does not
    apply (not on CPU, or no compiled library)."""
    lib = library()
    if lib is None or encoded.device.type != "cpu" or encoded.dtype != torch.int8:
        return reference.kv_int8_decode(encoded)
    encoded = encoded.contiguous()
    dim = encoded.shape[-1] - 4
    out = torch.empty((*encoded.shape[:-1], dim), dtype=torch.float32)
    rows = encoded.numel() // (dim + 4)
    lib.tandem_kv_int8_decode(encoded.data_ptr(), out.data_ptr(), rows, dim)
    return out


def cpu_float32(*tensors: torch.Tensor) -> bool:
    """Whether every tensor is float32 on CPU: what each compiled kernel computes on."""
    return all(t.device.type == "cpu" and t.dtype == torch.float32 for t in tensors)


def _applies(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor) -> bool:
    if not cpu_float32(q, k_cache, v_cache):
        return False
    if (
        k_cache.stride() != v_cache.stride()
        or k_cache.stride(3) != 1
        or k_cache.stride(2) != k_cache.shape[3]
    ):
        return False
    return q.shape[1] % k_cache.shape[0] == 0 and q.shape[1] // k_cache.shape[0] <= 32


def main() -> int:
    """``python -m kernels.cpu_ext``: build the compiled CPU kernels now (``make setup`` does)."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        path = build()
    except RuntimeError as e:
        print(
            f"compiled CPU kernels not built ({e}); the engine will use the PyTorch reference",
            file=sys.stderr,
        )
        return 0  # not an error: the reference path serves
    print(f"compiled CPU kernels: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
