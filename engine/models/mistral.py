"""Mistral: the Llama decoder with an optional sliding attention window (read from the config)."""

from __future__ import annotations

from engine.models.llama import LlamaForCausalLM


class MistralForCausalLM(LlamaForCausalLM):
    """Identical weights layout to Llama; ``cfg.sliding_window`` reaches attention through the layers."""
