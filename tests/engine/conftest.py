"""Tiny random Llama / Mistral / Qwen2 checkpoints, saved with ``save_pretrained`` once per session."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

TINY = {
    "llama": dict(
        cls="LlamaConfig", vocab_size=301, hidden_size=72, intermediate_size=136, num_hidden_layers=3,
        num_attention_heads=6, num_key_value_heads=2, head_dim=12, max_position_embeddings=512,
        rope_theta=10000.0, tie_word_embeddings=False,
        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                      "high_freq_factor": 4.0, "original_max_position_embeddings": 64},
    ),
    "mistral": dict(
        cls="MistralConfig", vocab_size=257, hidden_size=64, intermediate_size=112, num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=1, head_dim=16, max_position_embeddings=512,
        rope_theta=1000.0, sliding_window=None, tie_word_embeddings=False,
    ),
    "qwen2": dict(
        cls="Qwen2Config", vocab_size=263, hidden_size=48, intermediate_size=88, num_hidden_layers=4,
        num_attention_heads=6, num_key_value_heads=3, max_position_embeddings=512,
        rope_theta=1000000.0, tie_word_embeddings=True,
        rope_scaling={"rope_type": "linear", "factor": 2.0},
    ),
}  # fmt: skip


def build_tiny(kind: str, path: Path, seed: int = 0) -> Path:
    import transformers

    spec = dict(TINY[kind])
    cfg = getattr(transformers, spec.pop("cls"))(**spec, bos_token_id=0, eos_token_id=1, pad_token_id=1)
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    # Wider-than-default weights give peaked, well-separated logits: a greedy tie would make
    # "token-identical" depend on summation order rather than on correctness.
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0.0, 0.08)
    model.save_pretrained(path)
    return path


@pytest.fixture(scope="session", params=sorted(TINY))
def tiny_model(request, tmp_path_factory) -> Path:
    return build_tiny(request.param, tmp_path_factory.mktemp(request.param))
