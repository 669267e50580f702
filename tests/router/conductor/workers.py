"""Hand-made workers and routing problems the conductor's tests decide over."""

from __future__ import annotations

from router.conductor import CostModel, PrefillCandidate, RoutingProblem, Slo
from worker.types import WorkerInfo, WorkerLoad, WorkerState

COSTS = CostModel(
    prefill_fixed_s=0.01, prefill_per_token_s=0.001, fetch_fixed_s=0.001, fetch_per_byte_s=1e-9,
    decode_base_s=0.02, decode_per_seq_s=0.001, kv_bytes_per_token=10_000,
)  # fmt: skip
SLO = Slo(ttft_s=30, tbt_s=5)


def worker(wid: str, role: str = "prefill", kv_bytes_per_token: int = 0, **load) -> WorkerState:
    info = WorkerInfo(
        wid, role, f"tcp://127.0.0.1:1/{wid}", "m", "ab", 16, 64, 4096, f"store-{wid}", kv_bytes_per_token
    )
    return WorkerState(info, WorkerLoad(**{"free_pages": 100, "total_pages": 100, **load}))


def problem(prefill, decode=(), n=1000, max_tokens=16, turn=0) -> RoutingProblem:
    cands = tuple(c if isinstance(c, PrefillCandidate) else PrefillCandidate(c) for c in prefill)
    return RoutingProblem(n, max_tokens, cands, tuple(decode), turn)
