"""The fit-and-check loop: the benchmarks' results determine the cpu-smollm2 profile, which the
simulator and the router's defaults read."""

from __future__ import annotations

import json

import pytest

from bench.profile_fit import PROFILE, RESULTS, fit
from router.conductor.profile import default_costs, parse_profile

ENGINE = {
    "model": "m", "machine": {"threads": 2},
    "prefill": {"tokens_per_s": 250.0},
    "decode": [{"batch": 64, "step_ms_p50": 720.0, "prompt_len": 128}, {"batch": 32, "step_ms_p50": 400.0, "prompt_len": 128}],
}  # fmt: skip
TRANSFER = {"fetch_cost_model": {"fixed_s": 0.001, "per_byte_s": 5e-10}}


def test_the_fit_by_hand():
    profile = parse_profile(fit(ENGINE, TRANSFER))
    assert profile.prefill.per_token_s == pytest.approx(1 / 250)
    # two batch sizes: (720 - 400) ms / 32 sequences = 10 ms a sequence, 400 - 32 x 10 = 80 ms base
    assert profile.decode.per_seq_s == pytest.approx(0.010) and profile.decode.base_s == pytest.approx(0.080)
    assert profile.fetch.latency_s == 0.001 and profile.fetch.bytes_per_s == pytest.approx(2e9)
    assert profile.kv.bytes_per_token == 30 * 2 * 3 * 64 * 4


def test_the_hand_off_line_goes_through_the_exposed_cost_measured_at_the_default_setting():
    """bench.handoff measured 21 ms exposed for a 1,000-token prompt at 4 layers a message: the line
    starts at the fetch latency (1 ms) and reaches 21 ms there; without that result, the fetch line."""
    handoff = {
        "results": {"auto": {"4": {"median": {"handoff_s": 0.021}, "requests": [{"prompt_tokens": 1000}]}}}
    }
    profile = parse_profile(fit(ENGINE, TRANSFER, handoff))
    assert profile.handoff.latency_s == 0.001
    assert profile.handoff_s(1000) == pytest.approx(0.021)
    assert parse_profile(fit(ENGINE, TRANSFER)).handoff == parse_profile(fit(ENGINE, TRANSFER)).fetch


def test_the_shipped_profile_is_the_fit_of_the_shipped_results():
    engine = json.loads((RESULTS / "engine.json").read_text())
    transfer = json.loads((RESULTS / "transfer.json").read_text())
    handoff = json.loads((RESULTS / "handoff.json").read_text())
    assert json.loads(PROFILE.read_text()) == json.loads(json.dumps(fit(engine, transfer, handoff)))
    costs = default_costs()
    assert costs.prefill_per_token_s == pytest.approx(1 / engine["prefill"]["tokens_per_s"])
    assert costs.fetch_fixed_s == transfer["fetch_cost_model"]["fixed_s"]
