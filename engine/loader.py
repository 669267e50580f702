"""Build a model from an HF directory: ``config.json`` plus single or sharded safetensors."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn

from engine import gguf_blocks
from engine.config import ModelConfig
from engine.models import model_class
from engine.prepack import prepack_available, prepack_linears
from engine.quant import quantize_model

log = logging.getLogger("tandem.loader")


def weight_files(model_dir: Path) -> list[Path]:
    """The safetensors files of a checkpoint, via ``model.safetensors.index.json`` when sharded."""
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        files = [model_dir / name for name in shards]
    else:
        files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise ValueError(f"{model_dir} has no *.safetensors weights")
    for f in files:
        if not f.is_file():
            raise ValueError(f"{model_dir}: shard {f.name} named by the index is missing")
    return files


def iter_weights(files: list[Path]) -> Iterator[tuple[str, torch.Tensor]]:
    for path in files:
        with safe_open(str(path), framework="pt") as f:
            for name in f.keys():  # noqa: SIM118 - safe_open is not a mapping
                yield name, f.get_tensor(name)


def load_model(
    model_dir: str | Path,
    cfg: ModelConfig,
    dtype: torch.dtype,
    device: torch.device,
    max_positions: int,
    quantization: str | None = None,
    prepack: bool = True,
) -> nn.Module:
    """Instantiate the registered class for ``cfg`` and fill it from the checkpoint, in ``dtype``;
    with ``quantization`` ("int8" | "int4"), its linears are then quantized (see engine.quant), else
    with ``prepack`` they run on weights reordered for oneDNN where that applies (engine.prepack)."""
    model_dir = Path(model_dir)
    cls = model_class(cfg)
    with torch.device("meta"):
        model = cls(cfg, max_positions)
    # Materialise on the target device without initialising: every parameter gets overwritten.
    model = model.to_empty(device=device).to(dtype=dtype)
    model.load_weights(iter_weights(weight_files(model_dir)))
    model.eval()
    if quantization is not None:
        blocks = {}
        if quantization == "int4" and gguf_blocks.has_blocks(model_dir):  # the GGUF's own Q4_1 / Q8_0
            blocks = gguf_blocks.fused_for(model, gguf_blocks.read_blocks(model_dir))
        taken = quantize_model(model, quantization, blocks)
        if taken:
            log.info("int4: %d linears take the GGUF's own quantized blocks as they are", taken)
    elif prepack and prepack_available(device, dtype):
        prepack_linears(model)
    model.init_rope(device)
    return model
