"""The online step-time fit workers publish for the conductor."""

from __future__ import annotations

import pytest

from engine.step_cost import StepCostFit


def test_recovers_a_line():
    fit = StepCostFit(decay=1.0)
    for n in (16, 64, 128, 512, 256, 32):
        fit.add(n, 0.02 + 0.001 * n)
    assert fit.fixed_s == pytest.approx(0.02)
    assert fit.per_token_s == pytest.approx(0.001)
    assert fit.predict_s(100) == pytest.approx(0.12)
    assert fit.num_steps == 6


def test_forgets_old_steps():
    fit = StepCostFit(decay=0.9)
    for _ in range(20):
        for n in (64, 512):
            fit.add(n, 0.01 + 0.001 * n)
    for _ in range(200):  # the machine got twice as slow
        for n in (64, 512):
            fit.add(n, 0.02 + 0.002 * n)
    assert fit.per_token_s == pytest.approx(0.002, rel=1e-3)
    assert fit.fixed_s == pytest.approx(0.02, rel=1e-2)


def test_degenerate_inputs_stay_non_negative():
    same_size = StepCostFit()
    for _ in range(5):
        same_size.add(512, 1.0)
    assert same_size.fixed_s == 0 and same_size.per_token_s == pytest.approx(1 / 512)
    flat = StepCostFit(decay=1.0)  # bigger steps were faster: only a fixed cost shows
    flat.add(10, 0.5)
    flat.add(500, 0.3)
    assert flat.per_token_s == 0 and flat.fixed_s == pytest.approx(0.4)
    steep = StepCostFit(decay=1.0)  # a negative intercept: through the origin instead
    steep.add(100, 0.05)
    steep.add(200, 0.2)
    assert steep.fixed_s == 0 and steep.per_token_s > 0
    idle = StepCostFit()
    idle.add(0, 1.0)
    assert idle.num_steps == 0 and idle.predict_s(100) == 0
    with pytest.raises(ValueError):
        StepCostFit(decay=0)
