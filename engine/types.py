"""Plain domain types of the engine: what callers pass in and get back. Imports nothing heavy."""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from dataclasses import dataclass, field

# A prompt is text (tokenized by the engine) or token ids (used as they are).
Prompt = str | list[int]


@dataclass(frozen=True)
class SamplingParams:
    """How to pick tokens and when to stop. Validated on construction (ValueError names the field).

    ``temperature == 0`` is greedy. ``top_k <= 0``, ``top_p == 1`` and ``min_p == 0`` disable those
    filters. ``seed`` makes one request's samples reproducible whatever else runs beside it.
    ``logprobs = N`` returns, for every generated token, its log-probability and the top N
    alternatives, taken from the model's raw distribution (log-softmax of the logits, before
    penalties, temperature or filtering), as vLLM does by default; ``prompt_logprobs = N`` does the
    same for every prompt token after the first (such a request takes no prefix-cache hits).
    ``grammar`` (an llguidance grammar string, as ``router.structured.grammar_for`` builds it)
    constrains the output: the engine compiles it when the request is added (``ValueError`` if it
    does not compile), masks every token it forbids, and finishes the request ("stop") as soon as
    the grammar has ended.

    The logits are adjusted in vLLM's order, greedy rows included: ``min_tokens`` masks the stop
    tokens (``stop_token_ids``, and the EOS ids unless ``ignore_eos``) until that many tokens were
    generated; ``logit_bias`` ((token id, bias) pairs) is added; ``repetition_penalty`` divides the
    positive logits (multiplies the negative ones) of every token in the prompt or the output;
    ``frequency_penalty`` x count and ``presence_penalty`` x (count > 0) are subtracted, counting
    output tokens only. Then temperature, ``min_p`` (drop tokens less likely than ``min_p`` times
    the most likely one), top-k and top-p shape the distribution random rows draw from. The
    grammar's mask comes after the penalties, so that the greedy argmax and the random draw both
    see it.
    """

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    max_tokens: int = 16
    seed: int | None = None
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    logprobs: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    min_p: float = 0.0
    logit_bias: tuple[tuple[int, float], ...] = ()
    min_tokens: int = 0
    prompt_logprobs: int | None = None
    grammar: str | None = None

    def __post_init__(self) -> None:
        if not _is_number(self.temperature):
            raise ValueError(f"temperature must be a finite number, got {self.temperature!r}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not (0.0 < self.top_p <= 1.0):
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if not _is_int(self.top_k):
            raise ValueError(f"top_k must be an int (0 or -1 disables it), got {self.top_k!r}")
        if not _is_int(self.max_tokens) or self.max_tokens < 1:
            raise ValueError(f"max_tokens must be an int >= 1, got {self.max_tokens!r}")
        if self.seed is not None and not isinstance(self.seed, int):
            raise ValueError(f"seed must be an int or None, got {self.seed!r}")
        for name in ("logprobs", "prompt_logprobs"):
            value = getattr(self, name)
            if value is not None and (not _is_int(value) or value < 0):
                raise ValueError(f"{name} must be an int >= 0 or None, got {value!r}")
        if self.grammar is not None and not isinstance(self.grammar, str):
            raise ValueError(f"grammar must be a str or None, got {type(self.grammar).__name__}")
        object.__setattr__(self, "stop_token_ids", tuple(int(t) for t in self.stop_token_ids))
        self._check_adjustments()

    def _check_adjustments(self) -> None:
        _check_range("presence_penalty", self.presence_penalty, -2.0, 2.0)
        _check_range("frequency_penalty", self.frequency_penalty, -2.0, 2.0)
        _check_range("min_p", self.min_p, 0.0, 1.0)
        if not _is_number(self.repetition_penalty) or not 0.0 < self.repetition_penalty <= 2.0:
            raise ValueError(f"repetition_penalty must be in (0, 2], got {self.repetition_penalty!r}")
        if not _is_int(self.min_tokens) or not 0 <= self.min_tokens <= self.max_tokens:
            raise ValueError(
                f"min_tokens must be an int in [0, max_tokens={self.max_tokens}], got {self.min_tokens!r}"
            )
        object.__setattr__(self, "logit_bias", _normalized_bias(self.logit_bias))

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    @functools.cached_property
    def adjusts_logits(self) -> bool:
        """Whether penalties, ``logit_bias``, ``min_tokens`` or a ``grammar`` change this request's
        logits (the sampler's fast path skips the rows where they do not). Computed once."""
        return bool(
            self.presence_penalty or self.frequency_penalty or self.repetition_penalty != 1.0
            or self.logit_bias or self.min_tokens or self.grammar is not None
        )  # fmt: skip


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_range(name: str, value: object, low: float, high: float) -> None:
    if not _is_number(value) or not low <= value <= high:
        raise ValueError(f"{name} must be a number in [{low:g}, {high:g}], got {value!r}")


def _normalized_bias(pairs: object) -> tuple[tuple[int, float], ...]:
    """``logit_bias`` as ((token id, bias), ...); a mapping is accepted too; a repeated id keeps
    its last bias."""
    items = pairs.items() if isinstance(pairs, Mapping) else pairs
    try:
        items = [tuple(item) for item in items]  # type: ignore[union-attr]
    except TypeError:
        raise ValueError(f"logit_bias must be (token id, bias) pairs, got {pairs!r}") from None
    out: dict[int, float] = {}
    for item in items:
        if len(item) != 2 or not _is_int(item[0]) or item[0] < 0:
            raise ValueError(f"logit_bias entries must be (token id >= 0, bias) pairs, got {item!r}")
        _check_range(f"logit_bias of token {item[0]}", item[1], -100.0, 100.0)
        out[item[0]] = float(item[1])
    return tuple(out.items())


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
    finish_reason: str  # "stop" (eos, a stop token, or the grammar ended) or "length" (max_tokens / context)
    num_cached_tokens: int  # prompt tokens served from the prefix cache at admission
    logprobs: list[TokenLogprobs] | None = None
    # One entry per prompt token, the first None (nothing precedes it); None when not asked.
    prompt_logprobs: list[TokenLogprobs | None] | None = None


@dataclass(frozen=True)
class KVPages:
    """A prompt's KV already written into this engine's pages (``LLMEngine.reserve_pages``, then
    ``write_layers`` for every layer), handed to ``add_prefilled`` in place of a buffer."""

    pages: list[int]
