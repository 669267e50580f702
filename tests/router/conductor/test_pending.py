"""The router's own count of prefill work it sent that worker reports may not show yet."""

from __future__ import annotations

from router.conductor import CostModel, PendingDecodes, PendingPrefills, PrefillCandidate, RoutingProblem, Slo
from router.conductor.policies import cache_aware
from tests.router.conductor.workers import worker
from worker.types import WorkerInfo, WorkerLoad, WorkerState


def candidate(wid: str, **load) -> PrefillCandidate:
    info = WorkerInfo(wid, "prefill", f"tcp://127.0.0.1:1/{wid}", "m", "ab", 16, 64, 4096, f"store-{wid}")
    return PrefillCandidate(WorkerState(info, WorkerLoad(free_pages=100, total_pages=100, **load)))


def test_the_queue_seen_is_the_larger_of_reported_and_pending():
    pending = PendingPrefills()
    assert pending.adjust(candidate("p0")).worker.load.queued_prefill_tokens == 0
    pending.add("r1", "p0", 300)
    pending.add("r2", "p0", 200)
    seen = pending.adjust(candidate("p0", queued_prefill_tokens=100, num_waiting=1)).worker.load
    assert (seen.queued_prefill_tokens, seen.num_waiting) == (500, 2)
    seen = pending.adjust(candidate("p0", queued_prefill_tokens=900, num_waiting=3)).worker.load
    assert (seen.queued_prefill_tokens, seen.num_waiting) == (900, 3)  # the report already has them
    pending.done("r1")
    pending.done("r1")  # idempotent
    assert pending.tokens("p0") == 200
    pending.done("r2")
    assert pending.tokens("p0") == 0 and pending.adjust(candidate("p0")).worker.load.num_waiting == 0


def test_a_burst_is_spread_before_any_report_shows_it():
    """Both workers report idle (their heartbeats lag); the conductor still alternates."""
    pending = PendingPrefills()
    costs = CostModel(prefill_fixed_s=0.01, prefill_per_token_s=0.001)
    decode = candidate("d").worker
    decode = WorkerState(
        WorkerInfo("d", "decode", "tcp://127.0.0.1:1/d", "m", "ab", 16, 64, 4096), decode.load
    )
    chosen = []
    for i in range(4):
        workers = (pending.adjust(candidate("p0")), pending.adjust(candidate("p1")))
        route = cache_aware(RoutingProblem(1000, 16, workers, (decode,), i), costs, Slo(30, 5))
        pending.add(f"r{i}", route.prefill.worker_id, 1000)
        chosen.append(route.prefill.worker_id)
    assert sorted(chosen) == ["p0", "p0", "p1", "p1"]


def test_decode_commitments_shrink_the_free_pages_the_conductor_sees():
    pending = PendingDecodes()
    d = worker("d", "decode", free_pages=100, total_pages=100)  # idle as last reported
    pending.add("r1", "d", 30)
    pending.add("r2", "d", 50)
    assert pending.adjust(d).load.free_pages == 20
    # once the worker reports them in use, the two overlap: the larger counts
    busy = worker("d", "decode", free_pages=10, total_pages=100)
    assert pending.adjust(busy).load.free_pages == 10
    pending.done("r1")
    pending.done("r1")  # idempotent
    assert pending.pages("d") == 50 and pending.adjust(d).load.free_pages == 50
    pending.done("r2")
    assert pending.adjust(d) is d
