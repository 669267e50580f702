"""What happened to one simulated request, and what the conductor predicted for it."""

from __future__ import annotations

from dataclasses import dataclass

from router.conductor import Route
from router.conductor.costs import cached_split
from sim.trace import TraceRequest


@dataclass
class RequestRecord:
    index: int
    arrival_s: float
    input_tokens: int
    output_tokens: int
    rejected: str | None = None  # the conductor's reason
    prefill_id: str = ""
    decode_id: str = ""
    predicted_ttft_s: float = 0.0
    predicted_local_tokens: int = 0
    predicted_store_tokens: int = 0
    first_token_s: float | None = None  # virtual time
    finished_s: float | None = None
    cached_local_tokens: int = 0
    cached_store_tokens: int = 0
    mean_step_s: float = 0.0  # decode steps only (the time between tokens once decoding)

    @classmethod
    def of(cls, request: TraceRequest) -> RequestRecord:
        return cls(request.index, request.arrival_s, request.input_tokens, request.output_tokens)

    def routed(self, prefill_id: str, decode_id: str, route: Route) -> None:
        self.prefill_id, self.decode_id = prefill_id, decode_id
        self.predicted_ttft_s = route.predicted_ttft_s
        local, store, _ = cached_split(route.prefill, self.input_tokens)
        self.predicted_local_tokens, self.predicted_store_tokens = local, store

    def prefilled(self, now: float, cached_local: int, cached_store: int) -> None:
        self.first_token_s = now
        self.cached_local_tokens, self.cached_store_tokens = cached_local, cached_store

    def finish(self, now: float, mean_step_s: float) -> None:
        self.finished_s, self.mean_step_s = now, mean_step_s

    @property
    def ttft_s(self) -> float | None:
        return None if self.first_token_s is None else self.first_token_s - self.arrival_s

    @property
    def tpot_s(self) -> float | None:
        """(E2E - TTFT) / (output tokens - 1), as vLLM and ``bench.serve`` measure it (0 for one token)."""
        if self.finished_s is None or self.first_token_s is None:
            return None
        return (self.finished_s - self.first_token_s) / max(1, self.output_tokens - 1)

    def meets(self, ttft_s: float, tbt_s: float) -> bool:
        """Served within both SLOs (a rejected or unfinished request meets neither)."""
        return self.finished_s is not None and self.ttft_s <= ttft_s and self.tpot_s <= tbt_s
