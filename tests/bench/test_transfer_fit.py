"""The fetch cost line bench.transfer fits for the conductor: least squares, never a negative term."""

from __future__ import annotations

import itertools

import pytest

from bench.transfer import fit_cost

SIZES = [1 << 20, 4 << 20, 16 << 20]


def _sse(fixed: float, per_byte: float, seconds: list[float]) -> float:
    return sum((fixed + per_byte * x - y) ** 2 for x, y in zip(SIZES, seconds))


def test_points_on_a_line_give_that_line():
    fixed, per_byte = fit_cost(SIZES, [0.0008 + 5e-10 * x for x in SIZES])
    assert fixed == pytest.approx(0.0008)
    assert per_byte == pytest.approx(5e-10)


@pytest.mark.parametrize("seconds", [[0.00076, 0.0018, 0.0101], [0.004, 0.003, 0.002]])
def test_a_fit_that_would_go_negative_is_the_best_line_with_no_negative_term(seconds):
    fixed, per_byte = fit_cost(SIZES, seconds)
    assert fixed >= 0 and per_byte >= 0
    best = _sse(fixed, per_byte, seconds)
    grid = itertools.product([i * 1e-4 for i in range(101)], [i * 1e-11 for i in range(101)])
    assert all(best <= _sse(f, p, seconds) + 1e-15 for f, p in grid)
