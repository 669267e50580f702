"""Cost profiles: the shipped files load, costs grow with work, bad files name the field."""

from __future__ import annotations

import pytest

from router.conductor.profile import default_costs, load_profile, parse_profile, profile_names
from tests.sim.conftest import SMALL_PROFILE


def test_the_shipped_profiles_load_and_the_router_defaults_to_the_cpu_one():
    assert {"cpu-smollm2", "gpu-llama3-8b-h100"} <= set(profile_names())
    for name in profile_names():
        profile = load_profile(name)
        assert profile.prefill.per_token_s > 0 and profile.kv.bytes_per_token > 0
    assert default_costs() == load_profile("cpu-smollm2").cost_model()


def test_step_costs_grow_with_work_and_a_fetch_beats_recompute_on_the_gpu_profile():
    p = load_profile("gpu-llama3-8b-h100")
    assert p.prefill_step_s(100) < p.prefill_step_s(1000) < p.prefill_step_s(1000, 1000 * 4000)
    assert p.decode_step_s(1, 100) < p.decode_step_s(8, 100) < p.decode_step_s(8, 80_000)
    assert p.fetch_s(0) == 0.0 and p.fetch_s(512) < p.fetch_s(5120)
    # the reason a KV store pays: fetching 10k tokens costs a fraction of computing them
    assert p.fetch_s(10_000) < 0.5 * p.prefill.per_token_s * 10_000


def test_the_small_profile_by_hand(small_profile):
    assert small_profile.prefill_step_s(100) == pytest.approx(0.01 + 0.1)
    assert small_profile.decode_step_s(2, 500) == pytest.approx(0.02 + 0.01)
    assert small_profile.fetch_s(100) == pytest.approx(0.001 + 100 * 1000 / 1e8)
    costs = small_profile.cost_model()
    assert costs.fetch_per_byte_s == pytest.approx(1e-8) and costs.prefill_per_token_s == 0.001


def test_a_bad_profile_names_what_is_wrong():
    with pytest.raises(ValueError, match=r"missing section 'kv'"):
        parse_profile({k: v for k, v in SMALL_PROFILE.items() if k != "kv"})
    with pytest.raises(ValueError, match=r"decode.per_seq_s must be a number >= 0"):
        parse_profile({**SMALL_PROFILE, "decode": {**SMALL_PROFILE["decode"], "per_seq_s": "fast"}})
    with pytest.raises(ValueError, match=r"fetch.bytes_per_s must be positive"):
        parse_profile({**SMALL_PROFILE, "fetch": {"latency_s": 0.0, "bytes_per_s": 0}})
    with pytest.raises(ValueError, match="no cost profile 'h100'"):
        load_profile("h100")
