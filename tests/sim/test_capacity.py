"""The effective-capacity search against attainment curves whose answer is known."""

from __future__ import annotations

from sim.capacity import effective_capacity


def test_finds_the_largest_scale_that_meets_the_target_within_the_bisection():
    knee = 3.3
    scale, tried = effective_capacity(lambda s: 0.95 if s <= knee else 0.5, target=0.9, steps=8)
    assert scale <= knee and scale > knee * 0.99
    assert all((a >= 0.9) == (s <= knee) for s, a in tried)


def test_a_cluster_that_never_meets_the_target_has_no_capacity_and_one_that_always_does_is_capped():
    assert effective_capacity(lambda s: 0.0)[0] == 0.0
    assert effective_capacity(lambda s: 1.0, max_scale=64.0)[0] == 64.0


def test_a_knee_below_the_start_is_found_by_halving():
    scale, _ = effective_capacity(lambda s: 1.0 if s <= 0.3 else 0.0, steps=8)
    assert 0.29 < scale <= 0.3
