"""Prompt logprobs: every prompt token after the first, scored by the raw model distribution, against
transformers' log-softmax over the prompt; across prefill chunks and preemption, and never from
the prefix cache (whose positions have no logits)."""

from __future__ import annotations

import pytest

from engine import LLM, RequestOutput, SamplingParams
from tests.engine.reference import hf_greedy, hf_log_softmax, mixed_prompts


def _check_prompt_logprobs(model_dir, out: RequestOutput, num_top: int) -> None:
    prompt = out.prompt_token_ids
    ref = hf_log_softmax(model_dir, prompt)  # row i: the distribution of token i + 1
    assert len(out.prompt_logprobs) == len(prompt) and out.prompt_logprobs[0] is None
    for i in range(1, len(prompt)):
        lp, row = out.prompt_logprobs[i], ref[i - 1]
        assert lp.token_id == prompt[i]
        assert lp.logprob == pytest.approx(row[prompt[i]].item(), abs=1e-4), f"prompt token {i}"
        top_vals, top_ids = row.topk(num_top)
        assert list(lp.top) == top_ids.tolist()
        assert list(lp.top.values()) == pytest.approx(top_vals.tolist(), abs=1e-4)


@pytest.fixture(scope="module")
def llm(tiny_model) -> LLM:
    # A 16-token step budget prefills the longer prompts in several chunks.
    return LLM(str(tiny_model), page_size=8, num_pages=256, max_num_batched_tokens=16)


def test_prompt_logprobs_match_transformers_across_prefill_chunks(llm, tiny_model):
    prompts = mixed_prompts(250, seed=12)
    long, odd, plain = prompts[4], prompts[2], prompts[1]  # 70, 17 and 41 tokens
    params = [
        SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True, prompt_logprobs=3),
        SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True, prompt_logprobs=5),
        SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True),
    ]
    outs = llm.generate([long, odd, plain], params)
    _check_prompt_logprobs(tiny_model, outs[0], 3)
    _check_prompt_logprobs(tiny_model, outs[1], 5)
    assert outs[2].prompt_logprobs is None
    for prompt, out in zip([long, odd, plain], outs):  # scoring the prompt leaves generation alone
        assert out.token_ids == hf_greedy(tiny_model, prompt, 6)


def test_a_repeated_prompt_is_scored_again_not_served_from_the_cache(llm, tiny_model):
    prompt = mixed_prompts(250, seed=13)[4]
    params = SamplingParams(temperature=0.0, max_tokens=2, prompt_logprobs=2)
    first = llm.generate([prompt], params)[0]
    again = llm.generate([prompt], params)[0]
    assert again.num_cached_tokens == 0
    _check_prompt_logprobs(tiny_model, again, 2)
    assert again.prompt_logprobs == first.prompt_logprobs
    unscored = llm.generate([prompt], SamplingParams(temperature=0.0, max_tokens=2))[0]
    assert unscored.num_cached_tokens > 0  # the pages were cached: only the scoring request skips them


def test_prompt_logprobs_survive_preemption(tiny_model):
    # 14 pages x 8 tokens cannot hold the ten sequences at once: some are preempted and recomputed.
    llm = LLM(str(tiny_model), page_size=8, num_pages=14, max_num_batched_tokens=64)
    prompts = mixed_prompts(llm.engine.model_cfg.vocab_size, seed=1)
    params = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True, prompt_logprobs=2)
    outs = llm.generate(prompts, params)
    assert llm.engine.scheduler.num_preemptions > 0
    for out in outs:
        _check_prompt_logprobs(tiny_model, out, 2)


def test_one_token_prompt_and_no_alternatives(llm, tiny_model):
    one = llm.generate([[7]], SamplingParams(max_tokens=2, prompt_logprobs=4))[0]
    assert one.prompt_logprobs == [None]
    bare = llm.generate([[7, 8, 9]], SamplingParams(max_tokens=2, prompt_logprobs=0))[0]
    _check_prompt_logprobs(tiny_model, bare, 0)
    assert [lp.top for lp in bare.prompt_logprobs[1:]] == [{}, {}]
