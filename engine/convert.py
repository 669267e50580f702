"""GGUF → HF safetensors directory, once, so the engine always serves from ``config.json`` + safetensors.

transformers reads (and de-quantizes) the GGUF file; we then drop its quantizer bookkeeping so the
result is a plain float checkpoint, and save weights, tokenizer and chat template beside it, and the
file's own Q4_1 / Q8_0 blocks (``engine.gguf_blocks``: ``--quantization int4`` serves those). The
directory appears atomically: a crash mid-way leaves no half-written model behind.
"""

from __future__ import annotations

import fcntl
import logging
import shutil
import tempfile
from pathlib import Path

log = logging.getLogger("tandem.convert")


def convert_gguf(gguf_path: str | Path, out_dir: str | Path, dtype: str = "float32") -> Path:
    """Write an HF model directory for ``gguf_path`` at ``out_dir`` (no-op if it already exists)."""
    gguf_path, out_dir = Path(gguf_path), Path(out_dir)
    if not gguf_path.is_file():
        raise ValueError(f"GGUF file not found: {gguf_path}")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with open(out_dir.parent / f".{out_dir.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process may be converting the same model
        if (out_dir / "config.json").is_file():
            return out_dir
        _convert_locked(gguf_path, out_dir, dtype)
    return out_dir


def _convert_locked(gguf_path: Path, out_dir: Path, dtype: str) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from engine.gguf_blocks import write_blocks

    log.info("converting %s → %s (one time)", gguf_path.name, out_dir)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-", dir=out_dir.parent))
    try:
        src, name = str(gguf_path.parent), gguf_path.name
        tokenizer = AutoTokenizer.from_pretrained(src, gguf_file=name)
        model = AutoModelForCausalLM.from_pretrained(src, gguf_file=name, dtype=getattr(torch, dtype))
        # save_pretrained refuses a model that still carries its GGUF quantizer.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        kept = write_blocks(gguf_path, tmp)  # the file's own quantized weights, for --quantization int4
        if kept:
            log.info("kept %d quantized tensors of %s for --quantization int4", kept, gguf_path.name)
        tmp.rename(out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("converted model written to %s", out_dir)
