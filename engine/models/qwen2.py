"""Qwen2: the Llama decoder with biases on the q/k/v projections (``cfg.attention_bias`` is forced on)."""

from __future__ import annotations

from engine.models.llama import LlamaForCausalLM


class Qwen2ForCausalLM(LlamaForCausalLM):
    """q/k/v biases load into the fused ``qkv_proj.bias``; everything else is Llama's."""
