"""Model registry: HF ``architectures`` name → implementation. A new family is a new file here."""

from __future__ import annotations

from torch import nn

from engine.config import ModelConfig
from engine.models.llama import LlamaForCausalLM
from engine.models.mistral import MistralForCausalLM
from engine.models.qwen2 import Qwen2ForCausalLM

REGISTRY: dict[str, type[nn.Module]] = {
    "LlamaForCausalLM": LlamaForCausalLM,
    "MistralForCausalLM": MistralForCausalLM,
    "Qwen2ForCausalLM": Qwen2ForCausalLM,
}


def model_class(cfg: ModelConfig) -> type[nn.Module]:
    try:
        return REGISTRY[cfg.architecture]
    except KeyError:
        raise ValueError(
            f"unknown architecture {cfg.architecture!r}; supported: {', '.join(sorted(REGISTRY))}"
        ) from None
