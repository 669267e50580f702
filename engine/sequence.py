"""A request's state inside the engine."""

from __future__ import annotations

import enum
import itertools
from typing import TYPE_CHECKING

import torch

from engine.types import SamplingParams, TokenLogprobs
from kvstore.keys import block_key

if TYPE_CHECKING:  # engine.grammar needs llguidance, imported only when a request has a grammar
    from engine.grammar import TokenConstraint

_arrival = itertools.count()


class Status(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


class Sequence:
    """Prompt plus generated tokens, how many of them have KV in pages, and those pages.

    ``num_computed_tokens`` tokens have KV in ``block_table``; the rest (the prompt's uncomputed
    part, or the last sampled token) are what the next step must run. After preemption everything
    is recomputed from ``token_ids``, generated tokens included.

    ``constraint`` (set by the engine iff ``params.grammar``) has accepted exactly the output
    tokens: one ``accept`` per sampled token, none on recompute after preemption.
    """

    def __init__(self, request_id: str, prompt: list[int], params: SamplingParams) -> None:
        self.request_id = request_id
        self.arrival = next(_arrival)
        self.token_ids = list(prompt)
        self.num_prompt_tokens = len(prompt)
        self.params = params
        self.status = Status.WAITING
        self.num_computed_tokens = 0
        self.block_table: list[int] = []
        self.num_committed_pages = 0  # pages registered in the prefix cache by this sequence
        self.num_cached_tokens: int | None = None  # prefix-cache hit at first admission
        self.finish_reason: str | None = None
        self.logprobs: list[TokenLogprobs] | None = [] if params.logprobs is not None else None
        # Entry i scores prompt token i given the ones before it (none for the first). Filled chunk
        # by chunk as the prompt is computed; its length says how far it got (kept across preemption).
        self.prompt_logprobs: list[TokenLogprobs | None] | None = (
            [None] if params.prompt_logprobs is not None else None
        )
        # Disaggregation: a prefill-only sequence stops after its first token and keeps its pages
        # until the worker has exported them; a prefilled one arrives with its prompt's KV. A
        # sequence that holds its pages keeps them when it finishes, until ``LLMEngine.release``
        # (so a worker can copy its KV out first).
        self.prefill_only = False
        self.hold_pages = False
        self.pending_kv: list[torch.Tensor] | None = None  # the prompt's KV, in groups of layers
        self.num_shared_kv_pages = 0  # leading pages of pending_kv already held here (prefix cache)
        # Other choices of this prompt (OpenAI's n): born when this one samples its first token
        self.siblings: list[Sequence] = []
        self.constraint: TokenConstraint | None = None
        self._keys: list[bytes] = []
        self._prompt_tensor: torch.Tensor | None = None

    def token_seed(self) -> int | None:
        """Seed for the next sampled token: a function of (seed, output index) only, so a request
        samples the same tokens whichever process or batch it runs in."""
        if self.params.seed is None:
            return None
        return (self.params.seed * 1_000_003 + self.num_output_tokens) & 0x7FFF_FFFF_FFFF_FFFF

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens

    @property
    def output_token_ids(self) -> list[int]:
        return self.token_ids[self.num_prompt_tokens :]

    @property
    def num_uncomputed_tokens(self) -> int:
        return self.num_tokens - self.num_computed_tokens

    def prompt_tensor(self) -> torch.Tensor:
        """The prompt's token ids as a CPU int64 tensor, built once (penalties read it every step)."""
        if self._prompt_tensor is None:
            self._prompt_tensor = torch.tensor(self.token_ids[: self.num_prompt_tokens], dtype=torch.long)
        return self._prompt_tensor

    def page_keys(self, num_pages: int, page_size: int, fingerprint: bytes) -> list[bytes]:
        """Hash-chain keys of the first ``num_pages`` full pages (computed once, then memoised)."""
        assert num_pages * page_size <= self.num_tokens
        while len(self._keys) < num_pages:
            i = len(self._keys)
            prev = self._keys[-1] if self._keys else None
            self._keys.append(
                block_key(prev, self.token_ids[i * page_size : (i + 1) * page_size], fingerprint)
            )
        return self._keys[:num_pages]

    def __repr__(self) -> str:
        return (
            f"Sequence({self.request_id!r}, {self.status.value}, tokens={self.num_tokens}, "
            f"computed={self.num_computed_tokens}, pages={len(self.block_table)})"
        )
