"""OpenAI's ``n``: several choices of one prompt, prefilled once. Each choice must sample exactly
what it would alone (its own seed), and the choices must share the prompt's full pages: on one
engine (siblings forked after the first token) and across a prefill → decode hand-off."""

from __future__ import annotations

from engine import LLM, SamplingParams
from tests.engine.reference import mixed_prompts

PAGE = 8


def drain(llm: LLM) -> None:
    while llm.engine.has_unfinished():
        llm.engine.step()


def params_for(seed: int) -> SamplingParams:
    return SamplingParams(temperature=0.9, top_p=0.95, max_tokens=10, seed=seed, ignore_eos=True)


def alone(llm: LLM, prompt: list[int], seed: int) -> list[int]:
    return llm.generate([prompt], params_for(seed))[0].token_ids


def test_forked_choices_equal_their_runs_alone_and_share_the_prompt_pages(tiny_model):
    llm = LLM(str(tiny_model), page_size=PAGE, num_pages=128)
    prompt = mixed_prompts(250, seed=21)[4]  # 70 tokens: 8 full pages and a partial one
    expected = [alone(llm, prompt, seed) for seed in (1, 2, 3)]
    llm.engine.pool.reset_prefix_cache()
    parent = llm.engine.add_request(
        prompt, params_for(1), "c0", siblings=[("c1", params_for(2)), ("c2", params_for(3))]
    )
    llm.engine.step()  # the whole prompt in one step: every choice has its first token
    assert all(s.num_output_tokens == 1 for s in (parent, *parent.siblings))
    llm.engine.step()  # the siblings join: their prompt's full pages from the prefix cache, the tail run again
    full = len(prompt) // PAGE
    for sibling in parent.siblings:  # the prompt's full pages are the parent's, not copies
        assert sibling.block_table[:full] == parent.block_table[:full]
        assert sibling.num_cached_tokens == 0 and sibling.status.value == "running"
    drain(llm)
    assert [s.output_token_ids for s in (parent, *parent.siblings)] == expected
    assert llm.engine.pool.num_used_pages == 0


def test_one_prefill_hands_every_choice_to_decode_with_shared_pages(tiny_model):
    prefill = LLM(str(tiny_model), page_size=PAGE, num_pages=128)
    decode = LLM(str(tiny_model), page_size=PAGE, num_pages=128)
    prompt = mixed_prompts(250, seed=22)[4]
    expected = [alone(prefill, prompt, seed) for seed in (4, 5, 6)]
    prefill.engine.pool.reset_prefix_cache()
    seq = prefill.engine.add_request(
        prompt,
        params_for(4),
        "p0",
        prefill_only=True,
        siblings=[("p1", params_for(5)), ("p2", params_for(6))],
    )
    drain(prefill)
    assert [s.finish_reason for s in (seq, *seq.siblings)] == ["prefilled"] * 3
    assert all(not s.block_table for s in seq.siblings)  # prefill-only siblings hold no pages
    kv = prefill.engine.export_kv(seq)
    prefill.engine.release(seq)
    assert prefill.engine.pool.num_used_pages == 0
    choices = [
        decode.engine.add_prefilled(prompt, s.output_token_ids[0], params_for(seed), kv, request_id=f"d{i}")
        for i, (s, seed) in enumerate(zip((seq, *seq.siblings), (4, 5, 6)))
    ]
    decode.engine.step()
    full, total = len(prompt) // PAGE, -(-(len(prompt) + 1) // PAGE)
    assert all(c.block_table[:full] == choices[0].block_table[:full] for c in choices)
    assert decode.engine.pool.num_used_pages == total + 2 * (total - full)  # one prompt, three tails
    drain(decode)
    assert [c.output_token_ids for c in choices] == expected
    assert decode.engine.pool.num_used_pages == 0


def test_an_unborn_choice_can_be_aborted_alone(tiny_model):
    llm = LLM(str(tiny_model), page_size=PAGE, num_pages=64)
    prompt = mixed_prompts(250, seed=23)[2]
    parent = llm.engine.add_request(
        prompt, params_for(7), "a0", siblings=[("a1", params_for(8)), ("a2", params_for(9))]
    )
    dropped = llm.engine.abort("a1")
    assert dropped is not None and dropped.finish_reason == "abort"
    drain(llm)
    assert [s.request_id for s in parent.siblings] == ["a2"]
    assert parent.output_token_ids == alone(llm, prompt, 7) and parent.siblings[0].output_token_ids == alone(
        llm, prompt, 9
    )
    assert llm.engine.abort("a1") is None and llm.engine.pool.num_used_pages == 0
