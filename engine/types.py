"""Plain domain types of the engine: what callers pass in and get back. Imports nothing heavy."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

# A prompt is text (tokenized by the engine) or token ids (used as they are).
Prompt = str | list[int]


@dataclass(frozen=True)
class SamplingParams:
    """How to pick tokens and when to stop. Validated on construction (ValueError names the field).

    ``temperature == 0`` is greedy. ``top_k <= 0`` and ``top_p == 1`` disable those filters.
    ``seed`` makes one request's samples reproducible whatever else runs beside it.
    ``logprobs = N`` returns, for every generated token, its log-probability and the top N
    alternatives, taken from the model's raw distribution (log-softmax of the logits, before
    temperature or filtering), as vLLM does by default.
    """

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    max_tokens: int = 16
    seed: int | None = None
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    logprobs: int | None = None

    def __post_init__(self) -> None:
        if not (isinstance(self.temperature, (int, float)) and math.isfinite(self.temperature)):
            raise ValueError(f"temperature must be a finite number, got {self.temperature!r}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not (0.0 < self.top_p <= 1.0):
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if not isinstance(self.top_k, int) or isinstance(self.top_k, bool):
            raise ValueError(f"top_k must be an int (0 or -1 disables it), got {self.top_k!r}")
        if not isinstance(self.max_tokens, int) or isinstance(self.max_tokens, bool) or self.max_tokens < 1:
            raise ValueError(f"max_tokens must be an int >= 1, got {self.max_tokens!r}")
        if self.seed is not None and not isinstance(self.seed, int):
            raise ValueError(f"seed must be an int or None, got {self.seed!r}")
        if self.logprobs is not None and (not isinstance(self.logprobs, int) or self.logprobs < 0):
            raise ValueError(f"logprobs must be an int >= 0 or None, got {self.logprobs!r}")
        object.__setattr__(self, "stop_token_ids", tuple(int(t) for t in self.stop_token_ids))

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


@dataclass(frozen=True)
class EngineLoad:
    """An engine's load, as its worker reports it to the router (``worker.types.WorkerLoad``
    extends it with the worker's own counters).

    ``queued_prefill_tokens`` counts prompt tokens not yet computed (waiting sequences and running
    ones still in prefill). The step line ``seconds = step_fixed_s + step_per_token_s * tokens`` is
    the engine's online fit over its recent busy steps (``engine.step_cost``); ``step_samples`` is 0
    until it has run one.
    """

    num_running: int = 0
    num_waiting: int = 0
    queued_prefill_tokens: int = 0
    free_pages: int = 0
    total_pages: int = 0
    step_ms: float = 0.0  # recent mean busy step time
    step_fixed_s: float = 0.0
    step_per_token_s: float = 0.0
    step_samples: int = 0


@dataclass
class TokenLogprobs:
    """Log-probability of the sampled token and the top-N alternatives (token id → logprob)."""

    token_id: int
    logprob: float
    top: dict[int, float] = field(default_factory=dict)


@dataclass
class RequestOutput:
    """The result of one request. ``token_ids`` excludes the prompt."""

    request_id: str
    prompt_token_ids: list[int]
    token_ids: list[int]
    text: str
    finish_reason: str  # "stop" (eos or a stop token) or "length" (max_tokens / context)
    num_cached_tokens: int  # prompt tokens served from the prefix cache at admission
    logprobs: list[TokenLogprobs] | None = None
