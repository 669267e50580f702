"""The report's numbers against hand-computed cases."""

from __future__ import annotations

import pytest

from sim.summary import ceilings, percentiles
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
