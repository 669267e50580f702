"""The model runtime both pools share: paged KV cache, continuous batching, Llama-family models.

``engine.types`` is a leaf of plain types (no torch): importing it, or this package, does not load
the runtime; ``engine.LLM`` loads it on first use.
"""

from __future__ import annotations

from typing import Any

from engine.types import EngineLoad, RequestOutput, SamplingParams, TokenLogprobs

__all__ = ["LLM", "EngineLoad", "RequestOutput", "SamplingParams", "TokenLogprobs"]


def __getattr__(name: str) -> Any:
    if name == "LLM":
        from engine.llm import LLM

        return LLM
    raise AttributeError(f"module 'engine' has no attribute {name!r}")
