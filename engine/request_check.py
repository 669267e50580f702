"""What a request may ask of an engine, checked before anything is queued: its prompt's token ids,
its sampling parameters against the vocabulary, its length against the context and the KV cache,
and its grammar (compiled here: one that does not compile is refused)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from engine.config import ModelConfig
from engine.types import SamplingParams

if TYPE_CHECKING:
    from engine.grammar import GrammarCompiler, TokenConstraint


class RequestChecker:
    def __init__(
        self, model_dir: str | Path, model_cfg: ModelConfig, max_model_len: int, capacity_tokens: int
    ) -> None:
        self.model_dir = model_dir
        self.model_cfg = model_cfg
        self.max_model_len = max_model_len
        self.capacity_tokens = capacity_tokens
        self._grammar_compiler: GrammarCompiler | None = None  # built for the first grammar

    def check(self, prompt: list[int], params: SamplingParams) -> None:
        """``ValueError`` naming the problem if the request can never be served here (its grammar
        aside: see :meth:`compile`)."""
        if not isinstance(params, SamplingParams):
            raise ValueError(f"sampling params must be a SamplingParams, got {type(params).__name__}")
        if len(prompt) == 0:
            raise ValueError("prompt is empty: at least one token is needed")
        vocab = self.model_cfg.vocab_size
        bad = next((t for t in prompt if not isinstance(t, int) or not 0 <= t < vocab), None)
        if bad is not None:
            raise ValueError(f"prompt token id {bad!r} is outside the vocabulary [0, {vocab})")
        bad = next((t for t, _ in params.logit_bias if t >= vocab), None)
        if bad is not None:
            raise ValueError(f"logit_bias token id {bad} is outside the vocabulary [0, {vocab})")
        total = len(prompt) + params.max_tokens
        if total > self.max_model_len:
            raise ValueError(
                f"prompt ({len(prompt)} tokens) + max_tokens ({params.max_tokens}) = {total} exceeds the "
                f"model's context of {self.max_model_len} tokens; shorten the prompt or lower max_tokens"
            )
        if total > self.capacity_tokens:
            raise ValueError(
                f"prompt + max_tokens = {total} tokens exceeds the KV cache ({self.capacity_tokens} tokens); "
                "raise num_pages"
            )

    def compile(self, params: SamplingParams) -> TokenConstraint | None:
        """A fresh constraint for ``params.grammar`` (None without one); ``ValueError`` if it does
        not compile. The compiler (and its llguidance tokenizer) is built on first use."""
        if params.grammar is None:
            return None
        if self._grammar_compiler is None:
            from engine.grammar import GrammarCompiler

            cfg = self.model_cfg
            self._grammar_compiler = GrammarCompiler(self.model_dir, cfg.vocab_size, cfg.eos_token_ids)
        return self._grammar_compiler.compile(params.grammar)
