"""The worker's typed contracts: the wire's sampling struct against the engine's parameters, the
load report against its parts, and the membership timings' invariants."""

from __future__ import annotations

import dataclasses

import pytest

from engine.types import EngineLoad, SamplingParams
from transfer.messages import Sampling, TokenBias
from worker.base import BaseWorker, load_report, sampling_params
from worker.types import Membership, WorkerLoad, WorkerTotals


def test_the_wire_sampling_struct_has_the_engine_parameters_fields_and_defaults():
    wire = {f.name: f.default for f in dataclasses.fields(Sampling) if f.name != "n"}  # n: the worker's
    engine = {f.name: f.default for f in dataclasses.fields(SamplingParams)}
    assert wire == engine


def test_every_sampling_field_reaches_the_engine():
    sent = Sampling(
        temperature=0.5, top_p=0.8, top_k=7, max_tokens=9, seed=3, stop_token_ids=(4, 5), ignore_eos=True,
        logprobs=2, prompt_logprobs=1, presence_penalty=0.5, frequency_penalty=-0.5, repetition_penalty=1.2,
        min_p=0.1, logit_bias=(TokenBias(7, -3.0),), min_tokens=2, grammar='{"grammars": []}',
    )  # fmt: skip
    defaults = Sampling()
    got = sampling_params(sent)
    for f in dataclasses.fields(Sampling):
        if f.name == "n":
            continue
        assert getattr(sent, f.name) != getattr(defaults, f.name), f"set {f.name} in this test"
        want = ((7, -3.0),) if f.name == "logit_bias" else getattr(sent, f.name)
        assert getattr(got, f.name) == want, f.name


def test_invalid_sampling_is_refused_by_the_engine_parameters():
    with pytest.raises(ValueError, match="temperature"):
        sampling_params(Sampling(temperature=-1.0))


def test_a_load_report_is_its_engine_load_and_its_totals():
    engine = EngineLoad(num_running=3, queued_prefill_tokens=40, step_fixed_s=0.01, step_samples=9)
    totals = WorkerTotals(prompt_tokens=100, cached_store_tokens=64, kv_send_bytes=4096, store_fetch_s=0.5)
    load = load_report(engine, totals)
    names = {f.name for f in dataclasses.fields(WorkerLoad)}
    parts = {f.name for f in dataclasses.fields(EngineLoad)} | {
        f.name for f in dataclasses.fields(WorkerTotals)
    }
    assert names == parts | {"updated_at", "draining"}
    assert (load.num_running, load.queued_prefill_tokens, load.step_samples) == (3, 40, 9)
    assert (load.prompt_tokens, load.cached_store_tokens, load.kv_send_bytes) == (100, 64, 4096)
    assert load.store_fetch_s == 0.5


def test_membership_timings_keep_their_order():
    for timings in (Membership(), Membership(heartbeat_s=0.1, lease_ttl_s=0.4), Membership(2.0, 10.0)):
        # a worker is found lost before its lease would lapse, the view is stale no sooner than a
        # lease, and a suspect is avoided until a dead one has surely left the registry
        assert timings.heartbeat_s < timings.lost_grace_s < timings.lease_ttl_s + timings.heartbeat_s
        assert timings.stale_after_s >= timings.lease_ttl_s
        assert timings.suspect_s > timings.lease_ttl_s
    with pytest.raises(ValueError, match="heartbeat_s < lease_ttl_s"):
        Membership(heartbeat_s=3.0, lease_ttl_s=3.0)


def test_a_role_must_be_one_the_cluster_knows():
    with pytest.raises(ValueError, match="role must be one of"):

        class _Bad(BaseWorker, role="encoder"):
            pass
