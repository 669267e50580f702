"""The default model's GGUF blocks (Q4_1 layers, Q8_0 embedding) kept beside its float checkpoint
and served as they are by ``--quantization int4`` (engine.gguf_blocks)."""

from __future__ import annotations

import logging

import pytest
import torch

from cluster.models import default_gguf_path
from engine import LLM, SamplingParams
from engine.config import ModelConfig
from engine.gguf_blocks import fused_for, read_blocks, write_blocks
from engine.loader import iter_weights, weight_files
from engine.models import model_class
from engine.quant import Int4Weight, Int8Weight


@pytest.fixture(scope="module")
def blocks_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("blocks")
    assert write_blocks(default_gguf_path(), out) == 30 * 7 + 1  # 7 linears a layer, and the embedding
    return out


@pytest.fixture(scope="module")
def float_model(default_model):
    cfg = ModelConfig.from_dir(default_model)
    model = model_class(cfg)(cfg, 64)
    model.load_weights(iter_weights(weight_files(default_model)))
    return model


def test_the_blocks_are_the_weights_transformers_dequantized_from_the_same_file(default_model, blocks_dir):
    """Layout, nibble order and llama.cpp's Q/K row permutation, against the float checkpoint
    ``transformers`` wrote from the same GGUF."""
    blocks = read_blocks(blocks_dir)
    floats = dict(iter_weights(weight_files(default_model)))
    assert set(blocks) <= set(floats) and len(blocks) == 211
    for name, weight in blocks.items():
        assert isinstance(weight, Int8Weight if "embed_tokens" in name else Int4Weight), name
        torch.testing.assert_close(weight.dequantize(), floats[name], rtol=1e-5, atol=1e-6, msg=name)


def test_every_linear_takes_its_blocks_and_a_changed_block_is_refused(float_model, blocks_dir):
    blocks = read_blocks(blocks_dir)
    fused = fused_for(float_model, blocks)
    linears = [p for p, m in float_model.named_modules() if isinstance(m, torch.nn.Linear)]
    assert sorted(fused) == sorted(linears) and len(linears) == 30 * 4 + 1  # qkv, o, gate_up, down; head
    name = "model.layers.3.mlp.up_proj.weight"
    changed = blocks[name].codes.clone()
    changed[0, 0] ^= 1
    blocks[name] = Int4Weight(changed, blocks[name].scales_zeros, blocks[name].group_size)
    assert sorted(fused_for(float_model, blocks)) == sorted(set(linears) - {"layers.3.gate_up_proj"})


def test_int4_serves_the_gguf_blocks(default_model, tmp_path, caplog):
    """A model directory with blocks loads them (every linear); one without quantizes its floats.
    Both answer; the blocks are the file's own weights, so they are what int4 serves by default."""
    plain, with_blocks = tmp_path / "plain", tmp_path / "with-blocks"
    for model_dir in (plain, with_blocks):  # the checkpoint's files linked, not copied
        model_dir.mkdir()
        for f in default_model.iterdir():
            if f.is_file():
                (model_dir / f.name).symlink_to(f)
    write_blocks(default_gguf_path(), with_blocks)
    params = SamplingParams(temperature=0.0, max_tokens=8, ignore_eos=True)
    outputs = {}
    for model_dir in (plain, with_blocks):
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="tandem.loader"):
            llm = LLM(str(model_dir), quantization="int4", num_pages=16)
        outputs[model_dir.name] = llm.generate([[1, 2, 3, 4, 5]], params)[0].token_ids
        took = [r.getMessage() for r in caplog.records if "GGUF's own" in r.getMessage()]
        assert took == (
            ["int4: 121 linears take the GGUF's own quantized blocks as they are"]
            if model_dir is with_blocks
            else []
        )
    assert all(len(o) == 8 for o in outputs.values())
