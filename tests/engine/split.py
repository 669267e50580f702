"""Prefill on one engine, decode on another, in one process: the split the workers do, without them."""

from __future__ import annotations

from engine import LLM, SamplingParams


def drain(llm: LLM) -> None:
    while llm.engine.has_unfinished():
        llm.engine.step()


def prefilled(llm: LLM, prompt: list[int], params: SamplingParams, request_id: str = "s"):
    """``prompt`` prefilled on ``llm`` (prefill only): its sequence, pages still held."""
    seq = llm.engine.add_request(prompt, params, request_id=request_id, prefill_only=True)
    drain(llm)
    return seq
