"""The model runtime both pools share: paged KV cache, continuous batching, Llama-family models."""

from __future__ import annotations

from engine.llm import LLM
from engine.types import RequestOutput, SamplingParams, TokenLogprobs

__all__ = ["LLM", "RequestOutput", "SamplingParams", "TokenLogprobs"]
