"""Sampling: seeds reproduce, filters and stop conditions hold, logprobs match transformers."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from engine import LLM, SamplingParams
from engine.sampler import sample
from engine.sequence import Sequence
from tests.engine.reference import hf_log_softmax, mixed_prompts


@pytest.fixture(scope="module")
def llm(tiny_model) -> LLM:
    return LLM(str(tiny_model), page_size=8, num_pages=256)


def test_seeded_sampling_reproduces_whatever_runs_beside_it(llm):
    prompts = mixed_prompts(250, seed=3)[:5]
    seeded = SamplingParams(temperature=0.9, top_p=0.95, top_k=50, max_tokens=16, seed=1234, ignore_eos=True)
    alone = llm.generate([prompts[0]], seeded)[0].token_ids
    others = [SamplingParams(temperature=1.0, max_tokens=8, ignore_eos=True)] * 4
    crowded = llm.generate(prompts, [seeded, *others])[0].token_ids
    assert alone == crowded
    reseeded = SamplingParams(
        temperature=0.9, top_p=0.95, top_k=50, max_tokens=16, seed=4321, ignore_eos=True
    )
    assert llm.generate([prompts[0]], reseeded)[0].token_ids != alone


def test_top_k_one_is_greedy(llm):
    prompt = mixed_prompts(250, seed=4)[1]
    greedy = llm.generate([prompt], SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True))[0]
    top1 = llm.generate(
        [prompt], SamplingParams(temperature=1.5, top_k=1, max_tokens=12, seed=7, ignore_eos=True)
    )[0]
    assert top1.token_ids == greedy.token_ids


def test_max_tokens_and_stop_tokens(llm):
    prompt = mixed_prompts(250, seed=5)[4]
    free = llm.generate([prompt], SamplingParams(temperature=0.0, max_tokens=10, ignore_eos=True))[0]
    assert len(free.token_ids) == 10 and free.finish_reason == "length"
    stop = free.token_ids[4]
    first = free.token_ids.index(stop)
    stopped = llm.generate(
        [prompt], SamplingParams(temperature=0.0, max_tokens=10, ignore_eos=True, stop_token_ids=(stop,))
    )[0]
    assert stopped.token_ids == free.token_ids[: first + 1]
    assert stopped.finish_reason == "stop"


def test_eos_stops_unless_ignored(llm):
    prompt = mixed_prompts(250, seed=8)[1]
    free = llm.generate([prompt], SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True))[0]
    eos = free.token_ids[5]
    cut = free.token_ids.index(eos)
    cfg = llm.engine.model_cfg
    llm.engine.model_cfg = dataclasses.replace(cfg, eos_token_ids=(eos,))  # declare that token the eos
    try:
        stopped = llm.generate([prompt], SamplingParams(temperature=0.0, max_tokens=12))[0]
        ignored = llm.generate([prompt], SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True))[0]
    finally:
        llm.engine.model_cfg = cfg
    assert stopped.token_ids == free.token_ids[: cut + 1] and stopped.finish_reason == "stop"
    assert ignored.token_ids == free.token_ids and ignored.finish_reason == "length"


def test_logprobs_match_transformers_log_softmax(llm, tiny_model):
    prompt = mixed_prompts(250, seed=6)[2]
    out = llm.generate(
        [prompt], SamplingParams(temperature=0.8, max_tokens=6, logprobs=5, seed=3, ignore_eos=True)
    )[0]
    ref = hf_log_softmax(tiny_model, prompt + out.token_ids)
    for i, lp in enumerate(out.logprobs):
        row = ref[len(prompt) - 1 + i]
        assert lp.token_id == out.token_ids[i]
        assert lp.logprob == pytest.approx(row[lp.token_id].item(), abs=1e-4)
        top_vals, top_ids = row.topk(5)
        assert list(lp.top) == top_ids.tolist()
        assert list(lp.top.values()) == pytest.approx(top_vals.tolist(), abs=1e-4)


def test_sampler_respects_top_p_mass():
    # Two tokens hold 0.9 of the mass: with top_p=0.85 only they may ever be drawn.
    probs = torch.tensor([0.6, 0.3, 0.05, 0.05])
    logits = probs.log().repeat(400, 1)
    seqs = [Sequence(str(i), [0], SamplingParams(temperature=1.0, top_p=0.85, seed=i)) for i in range(400)]
    tokens, _ = sample(logits, seqs)
    assert set(tokens) == {0, 1}
    share = tokens.count(0) / len(tokens)
    assert 0.55 < share < 0.78  # renormalised: 0.6 / 0.9 ≈ 0.667
