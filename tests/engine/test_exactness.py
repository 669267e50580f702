"""Greedy generation must equal transformers token for token (float32)."""

from __future__ import annotations

import pytest

from engine import LLM, SamplingParams
from tests.engine.reference import hf_greedy, mixed_prompts

MAX_NEW = 24


def _check_against_hf(model_dir, llm: LLM, prompts: list[list[int]]) -> list:
    outs = llm.generate(prompts, SamplingParams(temperature=0.0, max_tokens=MAX_NEW, ignore_eos=True))
    for prompt, out in zip(prompts, outs):
        assert out.token_ids == hf_greedy(model_dir, prompt, MAX_NEW), (
            f"prompt of {len(prompt)} tokens diverged"
        )
        assert out.finish_reason == "length"
    return outs


@pytest.mark.parametrize("prepack", [True, False], ids=["onednn-prepacked", "f-linear"])
def test_tiny_models_match_transformers_with_prefix_hits(tiny_model, prepack):
    # A small per-step budget makes long prompts prefill in chunks and lets the first prompts'
    # pages be committed before the ones sharing their prefixes are admitted.
    llm = LLM(str(tiny_model), page_size=8, num_pages=256, max_num_batched_tokens=48, prepack=prepack)
    assert llm.engine.runner.model.layers[0].o_proj.__class__.__name__ == (
        "PrepackedLinear" if prepack else "Linear"
    )
    prompts = mixed_prompts(llm.engine.model_cfg.vocab_size)
    outs = _check_against_hf(tiny_model, llm, prompts)
    assert [o.num_cached_tokens for o in outs[:7]] == [0] * 7
    assert all(o.num_cached_tokens > 0 for o in outs[7:])
    assert outs[9].num_cached_tokens == 64  # 70 shared tokens → 8 full pages of 8


def test_tiny_models_match_transformers_under_preemption(tiny_model):
    # 14 pages x 8 tokens cannot hold all ten sequences at once: the scheduler must preempt and recompute.
    llm = LLM(str(tiny_model), page_size=8, num_pages=14, max_num_batched_tokens=64)
    prompts = mixed_prompts(llm.engine.model_cfg.vocab_size, seed=1)
    _check_against_hf(tiny_model, llm, prompts)
    assert llm.engine.scheduler.num_preemptions > 0
    assert llm.engine.pool.num_used_pages == 0, "finished sequences must return every page"


def test_page_size_does_not_change_tokens(tiny_model):
    prompts = mixed_prompts(250, seed=2)[:4]
    params = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)
    a = LLM(str(tiny_model), page_size=4, num_pages=512).generate(prompts, params)
    b = LLM(str(tiny_model), page_size=32, num_pages=64).generate(prompts, params)
    assert [o.token_ids for o in a] == [o.token_ids for o in b]


@pytest.mark.slow
def test_smollm2_matches_transformers(default_model):
    llm = LLM(str(default_model), page_size=16, num_pages=24, max_num_batched_tokens=96)
    tok = llm.tokenizer
    questions = [
        "What is the capital of France?",
        "Write a haiku about the sea.",
        "def fibonacci(n):",
        "List three primary colors.",
        "Explain what a KV cache is in one sentence.",
        "Translate 'good morning' into Spanish.",
        "What is 12 times 12?",
        "Name a famous physicist.",
    ]
    prompts = [tok.apply_chat_template([{"role": "user", "content": q}]) for q in questions]
    prompts.append(prompts[2][:-5] + tok.encode(" please explain recursion"))
    outs = _check_against_hf(default_model, llm, prompts)
    # Every chat prompt shares the system preamble of the template: later ones hit the prefix cache.
    assert all(o.num_cached_tokens > 0 for o in outs[4:])
    assert llm.engine.scheduler.num_preemptions > 0
