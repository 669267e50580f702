"""The report's numbers against hand-computed cases."""

from __future__ import annotations

import pytest

from sim.summary import ceilings, intrinsic_misses, percentiles
from sim.trace import TraceRequest


def test_ceilings_by_hand():
    # block = 10 tokens; each prompt 31 tokens (3 cacheable blocks)
    requests = [
        TraceRequest(0, 0.0, 31, 1, (1, 2, 3)),
        TraceRequest(1, 1.0, 31, 1, (1, 2, 4)),  # 2 blocks seen before
        TraceRequest(2, 2.0, 31, 1, (5, 6, 7)),  # nothing
        TraceRequest(3, 3.0, 31, 1, (1, 2, 3)),  # 3 blocks seen; an LRU of 4 has lost 3 by now
    ]
    c = ceilings(requests, block_tokens=10, capacity_chunks=4)
    assert c["infinite"] == pytest.approx((0 + 20 + 0 + 30) / (4 * 31))
    # LRU of 4 after each request: [1,2,3] -> [3,1,2,4] -> [2,4,5,6,7]->[4,5,6,7]... 1 is gone
    assert c["oracle_lru"] == pytest.approx((0 + 20 + 0 + 0) / (4 * 31))


def test_percentiles_of_a_known_list():
    p = percentiles([float(i) for i in range(1, 101)])
    assert (p["p50"], p["p90"], p["p99"]) == (51.0, 91.0, 100.0)
    assert p["mean"] == pytest.approx(50.5)
    assert percentiles([]) == {"mean": 0.0, "p50": 0.0, "p90": 0.0, "p99": 0.0}


def test_requests_no_placement_serves_in_time_by_hand(small_profile):
    # small profile: prefill 10 ms + 1 ms a token, TTFT SLO 10 s; decode 25 ms a step alone,
    # hand-off 2 ms + 1 us a token, TBT SLO 1 s
    requests = [
        TraceRequest(0, 0.0, 20_000, 2, ()),  # 20 s of prefill: misses TTFT
        TraceRequest(1, 0.0, 5_000, 2, ()),  # 5 s: meets it; 2nd token after 7 ms + 25 ms: meets TBT
        TraceRequest(2, 0.0, 5_000, 1, ()),  # one token: no TBT to miss
    ]
    misses = intrinsic_misses(requests, small_profile)
    assert misses["ttft"] == pytest.approx(1 / 3) and misses["tbt"] == 0
    assert misses["attainment_ceiling"] == pytest.approx(2 / 3)
    slow_link = small_profile.__class__(
        **{**small_profile.__dict__, "handoff": small_profile.handoff.__class__(2.0, 1e9)}
    )
    assert intrinsic_misses(requests[1:2], slow_link)["tbt"] == 1.0  # the 2nd token waits 2 s for its KV
