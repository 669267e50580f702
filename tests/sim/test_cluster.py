"""The simulated cluster against hand-computed timelines, and the conductor in its loop."""

from __future__ import annotations

import pytest

from router.conductor import POLICIES, Rejection
from router.conductor.profile import load_profile
from sim.cluster import ClusterShape, SimCluster
from sim.prefill import PrefillJob
from sim.summary import ceilings, summarize
from sim.trace import TraceRequest, read_mooncake

# small profile (tests/sim/conftest.py): prefill 0.01 s + 1 ms a token; decode 20 ms + 5 ms a
# sequence; 100-token chunks; fetch 1 ms + 10 us a token; hand-off 2 ms + 1 us a token
A = TraceRequest(0, 0.0, 250, 3, (1, 2))
B = TraceRequest(1, 1.0, 250, 1, (1, 2))


def test_one_request_by_hand(small_profile):
    (a,) = SimCluster(small_profile, ClusterShape(1, 1), "round_robin").run([A])
    assert a.ttft_s == pytest.approx(0.01 + 0.250)  # one prefill step of 250 tokens
    handed_off = 0.26 + 0.002 + 250e-6
    assert a.finished_s == pytest.approx(handed_off + 2 * (0.02 + 0.005))  # two decode steps of one
    assert a.mean_step_s == pytest.approx(0.025)
    assert a.tpot_s == pytest.approx((a.finished_s - 0.26) / 2)
    assert (a.cached_local_tokens, a.cached_store_tokens) == (0, 0)


def test_a_repeated_prefix_hits_the_same_instances_cache(small_profile):
    _, b = SimCluster(small_profile, ClusterShape(1, 1), "round_robin").run([A, B])
    assert (b.cached_local_tokens, b.cached_store_tokens) == (200, 0)
    assert b.ttft_s == pytest.approx(0.01 + 0.050)
    assert b.finished_s == b.first_token_s  # one output token: done at prefill


def test_a_client_with_one_slot_sends_the_next_request_when_the_first_is_answered(small_profile):
    c = TraceRequest(1, 0.1, 250, 3, (7, 8))  # due while A runs, no shared prefix
    shape = ClusterShape(1, 1)
    a, c_free = SimCluster(small_profile, shape, "round_robin").run([A, c])
    assert c_free.arrival_s == pytest.approx(0.1)  # no cap: sent when due, queues at the prefill
    assert c_free.ttft_s == pytest.approx(0.26 - 0.1 + 0.26)
    a, c_held = SimCluster(small_profile, shape, "round_robin", max_in_flight=1).run([A, c])
    assert c_held.arrival_s == pytest.approx(a.finished_s)  # held at the client until A is done
    assert c_held.ttft_s == pytest.approx(0.26)  # counted from sending: an idle prefill instance


def test_another_instance_fetches_the_prefix_from_the_store(small_profile):
    _, b = SimCluster(small_profile, ClusterShape(2, 1), "round_robin").run([A, B])
    assert b.prefill_id == "prefill-1"
    assert (b.cached_local_tokens, b.cached_store_tokens) == (0, 200)
    assert b.ttft_s == pytest.approx((0.001 + 200e-5) + 0.01 + 0.050)  # fetch, then 50 tokens
    assert (b.predicted_local_tokens, b.predicted_store_tokens) == (0, 200)  # the index saw it


def test_without_a_store_another_instance_recomputes(small_profile):
    _, b = SimCluster(small_profile, ClusterShape(2, 1, store=False), "round_robin").run([A, B])
    assert (b.cached_local_tokens, b.cached_store_tokens) == (0, 0)
    assert b.ttft_s == pytest.approx(0.01 + 0.250)


def test_local_only_reads_its_own_node_and_the_router_sees_just_that(small_profile):
    shape = ClusterShape(2, 1, remote_fetch=False)
    _, b = SimCluster(small_profile, shape, "round_robin").run([A, B])
    assert b.prefill_id == "prefill-1" and (b.cached_local_tokens, b.cached_store_tokens) == (0, 0)
    assert (b.predicted_local_tokens, b.predicted_store_tokens) == (0, 0)
    a, b = SimCluster(small_profile, shape, "cache_aware").run([A, B])
    assert b.prefill_id == a.prefill_id and b.cached_local_tokens == 200  # follows its prefix


def test_the_policy_is_the_routers_own_looked_up_by_name(small_profile, monkeypatch):
    calls = []

    def spy(problem, costs, slo):
        calls.append(problem)
        return POLICIES["round_robin"](problem, costs, slo)

    monkeypatch.setitem(POLICIES, "spy", spy)
    records = SimCluster(small_profile, ClusterShape(2, 1), "spy").run([A, B])
    assert len(calls) == 2 and all(r.finished_s is not None for r in records)
    assert [len(p.prefill) for p in calls] == [2, 2] and calls[1].turn == 1
    # the second request's problem carries the store's answer, built the router's way
    assert {c.worker_id: c.cached_store_tokens for c in calls[1].prefill} == {
        "prefill-0": 0,
        "prefill-1": 200,
    }
    assert {c.worker_id: c.cached_local_tokens for c in calls[1].prefill} == {
        "prefill-0": 200,
        "prefill-1": 0,
    }


def test_rejections_are_counted_and_meet_no_slo(small_profile, monkeypatch):
    monkeypatch.setitem(POLICIES, "no", lambda problem, costs, slo: Rejection("ttft_slo", "full"))
    records = SimCluster(small_profile, ClusterShape(1, 1), "no").run([A, B])
    summary = summarize(records, 10.0, 1.0)
    assert summary["rejected"] == {"ttft_slo": 2} and summary["completed"] == 0
    assert summary["slo_attainment"] == 0.0


def test_an_unknown_policy_is_refused(small_profile):
    with pytest.raises(ValueError, match="unknown policy 'fastest'"):
        SimCluster(small_profile, ClusterShape(1, 1), "fastest")


def test_loads_are_seen_as_last_reported(small_profile):
    cluster = SimCluster(small_profile, ClusterShape(1, 1), "round_robin", lag_s=0.5)
    assert cluster.reporter.states(0.0)["prefill-0"].load.queued_prefill_tokens == 0
    cluster.prefill["prefill-0"].queue.append(PrefillJob(A, "decode-0"))  # queued, not yet reported
    assert cluster.reporter.states(0.4)["prefill-0"].load.queued_prefill_tokens == 0
    assert cluster.reporter.states(0.5)["prefill-0"].load.queued_prefill_tokens == 250


@pytest.mark.parametrize(
    "shape", [ClusterShape(4, 4), ClusterShape(4, 4, colocated=True)], ids=["disagg", "colocated"]
)
def test_a_trace_slice_completes_within_the_cache_ceiling(trace_slice, shape):
    profile = load_profile("gpu-llama3-8b-h100")
    requests = read_mooncake(trace_slice, limit=200)
    records = SimCluster(profile, shape, "round_robin").run(requests)
    summary = summarize(records, profile.slo.ttft_s, profile.slo.tbt_s)
    assert summary["completed"] == 200 and not summary["rejected"]
    assert 0 < summary["hit_ratio"]["total"] <= ceilings(requests, 512, 10**9)["infinite"]
    if shape.colocated:
        assert summary["hit_ratio"]["store"] == 0  # no store: its own cache only
    assert all(r.ttft_s > 0 and r.finished_s >= r.first_token_s for r in records)
