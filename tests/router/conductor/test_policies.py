"""The conductor's policies as pure functions over hand-made cluster snapshots."""

from __future__ import annotations

import pytest

from router.conductor import POLICIES, PrefillCandidate, Rejection, Route, Slo
from router.conductor.costs import fetch_time_s
from router.conductor.policies import cache_aware, least_loaded, most_headroom, prefix, random, round_robin
from tests.router.conductor.workers import COSTS, SLO, problem, worker


def test_cache_aware_prefers_the_local_hit():
    p0, p1 = worker("p0"), worker("p1")
    route = cache_aware(
        problem([PrefillCandidate(p0), PrefillCandidate(p1, 960)], [worker("d", "decode")]), COSTS, SLO
    )
    assert isinstance(route, Route) and route.prefill.worker_id == "p1" and route.decode.info.worker_id == "d"


def test_cache_aware_trades_the_hit_against_the_queue():
    cached_but_busy = PrefillCandidate(worker("p0", queued_prefill_tokens=5000), 960)
    idle = PrefillCandidate(worker("p1"))
    route = cache_aware(problem([cached_but_busy, idle], [worker("d", "decode")]), COSTS, SLO)
    assert route.prefill.worker_id == "p1"
    slightly_busy = PrefillCandidate(worker("p0", queued_prefill_tokens=100), 960)
    assert (
        cache_aware(problem([slightly_busy, idle], [worker("d", "decode")]), COSTS, SLO).prefill.worker_id
        == "p0"
    )


def test_cache_aware_counts_a_store_hit_at_its_fetch_cost():
    fetch = PrefillCandidate(worker("p0"), 0, 960)  # 960 tokens fetched: ~10 ms instead of ~960 ms
    local = PrefillCandidate(worker("p1", queued_prefill_tokens=200), 960)
    route = cache_aware(problem([fetch, local], [worker("d", "decode")]), COSTS, SLO)
    assert route.prefill.worker_id == "p0"
    assert route.predicted_ttft_s == pytest.approx(0.01 + 0.04 + fetch_time_s(COSTS, 960))


def test_decode_goes_to_the_most_headroom():
    full = worker("d0", "decode", free_pages=1, num_running=1)
    slow = worker("d1", "decode", step_ms=200, num_running=30)
    roomy = worker("d2", "decode", num_running=3, step_ms=10)
    route = cache_aware(problem([worker("p")], [full, slow, roomy]), COSTS, SLO)
    assert route.decode.info.worker_id == "d2"
    # nobody has room for the request: the one with the most free pages, for the baselines; the
    # cache-aware conductor rejects instead of letting it wait for a slot
    tight = [worker("d0", "decode", free_pages=2), worker("d1", "decode", free_pages=5)]
    assert most_headroom(problem([worker("p")], tight), COSTS).info.worker_id == "d1"
    assert prefix(problem([worker("p")], tight), COSTS, SLO).decode.info.worker_id == "d1"
    rejected = cache_aware(problem([worker("p")], tight), COSTS, SLO)
    assert isinstance(rejected, Rejection) and rejected.reason == "tbt_slo" and "room" in rejected.message


def test_slo_rejections():
    decode = [worker("d", "decode", step_ms=300)]
    reject = cache_aware(problem([worker("p", queued_prefill_tokens=40_000)], decode), COSTS, SLO)
    assert isinstance(reject, Rejection) and reject.reason == "ttft_slo" and 1 <= reject.retry_after_s <= 60
    reject = cache_aware(problem([worker("p")], decode), COSTS, Slo(ttft_s=30, tbt_s=0.1))
    assert isinstance(reject, Rejection) and reject.reason == "tbt_slo"
    for baseline in (round_robin, least_loaded, prefix, random):  # baselines never reject on SLOs
        assert isinstance(
            baseline(problem([worker("p", queued_prefill_tokens=40_000)], decode), COSTS, SLO), Route
        )


def test_a_request_too_long_for_the_slo_is_served_by_an_idle_worker_and_shed_by_a_busy_one():
    decode = [worker("d", "decode", free_pages=10_000, total_pages=10_000)]
    long = problem([worker("p")], decode, n=40_000)  # ~40 s of prefill on an idle worker: misses anyway
    assert isinstance(cache_aware(long, COSTS, SLO), Route)
    busy = problem([worker("p", queued_prefill_tokens=10)], decode, n=40_000)
    assert cache_aware(busy, COSTS, SLO).reason == "ttft_slo"


def test_a_hopeless_request_is_shed_even_by_an_idle_worker():
    decode = [worker("d", "decode", free_pages=10_000, total_pages=10_000)]
    slo = Slo(ttft_s=10, tbt_s=5, late_factor=3)
    # 0.01 + 0.001 x 29_000 = 29.01 s: within 3 x 10 s, served late; 31_000 tokens (31.01 s) is not
    assert isinstance(cache_aware(problem([worker("p")], decode, n=29_000), COSTS, slo), Route)
    shed = cache_aware(problem([worker("p")], decode, n=31_000), COSTS, slo)
    assert isinstance(shed, Rejection) and shed.reason == "ttft_slo"
    unbounded = Slo(ttft_s=10, tbt_s=5, late_factor=float("inf"))
    assert isinstance(cache_aware(problem([worker("p")], decode, n=31_000), COSTS, unbounded), Route)
    with pytest.raises(ValueError, match="late_factor"):
        Slo(late_factor=0.5)


def test_colocated_workers_decode_themselves():
    route = cache_aware(
        problem([worker("c0", "colocated", queued_prefill_tokens=10), worker("c1", "colocated")]), COSTS, SLO
    )
    assert route.prefill.worker_id == "c1" and route.decode is None and route.decode_worker_id == "c1"


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_nothing_to_route_to(name):
    policy = POLICIES[name]
    assert policy(problem([]), COSTS, SLO).reason == "no_workers"
    assert policy(problem([worker("p")]), COSTS, SLO).reason == "no_decode"  # prefill without decode


def test_round_robin_takes_turns():
    ps, ds = [worker("p0"), worker("p1"), worker("p2")], [worker("d0", "decode"), worker("d1", "decode")]
    picks = [round_robin(problem(ps, ds, turn=t), COSTS, SLO) for t in range(6)]
    assert [r.prefill.worker_id for r in picks] == ["p0", "p1", "p2", "p0", "p1", "p2"]
    assert [r.decode.info.worker_id for r in picks] == ["d0", "d1", "d0", "d1", "d0", "d1"]


def test_least_loaded_and_prefix():
    ps = [
        PrefillCandidate(worker("p0", queued_prefill_tokens=300), 640),
        PrefillCandidate(worker("p1"), 0, 320),
    ]
    ds = [worker("d0", "decode", num_running=4), worker("d1", "decode", num_running=1)]
    ll = least_loaded(problem(ps, ds), COSTS, SLO)
    assert (ll.prefill.worker_id, ll.decode.info.worker_id) == ("p1", "d1")
    assert prefix(problem(ps, ds), COSTS, SLO).prefill.worker_id == "p0"  # longest prefix, whatever the load


def test_random_is_reproducible_per_turn_and_reaches_every_worker():
    prefill = [worker(f"p{i}") for i in range(3)]
    decode = [worker(f"d{i}", "decode") for i in range(2)]

    def pick(turn: int) -> tuple[str, str]:
        route = random(problem(prefill, decode, turn=turn), COSTS, SLO)
        return route.prefill.worker_id, route.decode.info.worker_id

    assert [pick(t) for t in range(40)] == [pick(t) for t in range(40)]
    assert {pick(t)[0] for t in range(40)} == {"p0", "p1", "p2"}
    assert {pick(t)[1] for t in range(40)} == {"d0", "d1"}
