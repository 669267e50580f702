"""Penalties, logit bias, min_tokens and min-p: against transformers' logits processors, a
hand-computed case, and transformers' greedy ``generate`` on a tiny model."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from transformers import (
    MinNewTokensLengthLogitsProcessor,
    MinPLogitsWarper,
    RepetitionPenaltyLogitsProcessor,
    SequenceBiasLogitsProcessor,
    TemperatureLogitsWarper,
)

from engine import LLM, SamplingParams
from engine.sampler import adjust_logits, sample, sampling_probs
from engine.sequence import Sequence
from tests.engine.reference import hf_model, mixed_prompts

VOCAB = 32


def _seq(params: SamplingParams, prompt: list[int], output: tuple[int, ...] | list[int] = ()) -> Sequence:
    seq = Sequence("r", list(prompt), params)
    seq.token_ids.extend(output)
    return seq


def _logits(num_rows: int, seed: int = 0, vocab: int = VOCAB) -> torch.Tensor:
    return torch.randn(num_rows, vocab, generator=torch.Generator().manual_seed(seed)) * 3


def _history(seed: int) -> tuple[list[int], list[int]]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, VOCAB, (9,), generator=g).tolist(), torch.randint(
        0, VOCAB, (5,), generator=g
    ).tolist()


# -- the logit adjustments, one at a time, against transformers ------------------------------------


def test_repetition_penalty_matches_transformers():
    logits = _logits(3)
    penalties = [1.3, 0.7, 2.0]
    histories = [_history(i) for i in range(3)]
    seqs = [_seq(SamplingParams(repetition_penalty=r), p, o) for r, (p, o) in zip(penalties, histories)]
    ours = adjust_logits(logits, seqs)
    for i, (r, (prompt, output)) in enumerate(zip(penalties, histories)):
        ref = RepetitionPenaltyLogitsProcessor(r)(torch.tensor([prompt + output]), logits[i : i + 1])
        torch.testing.assert_close(ours[i], ref[0], rtol=0, atol=0)


def test_presence_and_frequency_count_output_tokens_only():
    # Prompt [0, 1] is not counted; output [2, 2, 3]: token 2 twice, token 3 once.
    logits = torch.tensor([[1.0, 2.0, -1.0, 0.5, 0.0]])
    seq = _seq(SamplingParams(presence_penalty=0.5, frequency_penalty=0.25), [0, 1], [2, 2, 3])
    expected = [1.0, 2.0, -1.0 - 0.5 - 2 * 0.25, 0.5 - 0.5 - 0.25, 0.0]
    assert adjust_logits(logits, [seq])[0].tolist() == pytest.approx(expected)


def test_repetition_penalty_applies_before_presence_and_frequency():
    # vLLM's order: repetition (prompt and output) divides positives / multiplies negatives first.
    logits = torch.tensor([[1.0, 2.0, -1.0, 0.5, 0.0]])
    params = SamplingParams(presence_penalty=0.5, frequency_penalty=0.25, repetition_penalty=2.0)
    seq = _seq(params, [0, 1], [2, 2, 3])
    expected = [0.5, 1.0, -2.0 - 0.5 - 0.5, 0.25 - 0.5 - 0.25, 0.0]
    assert adjust_logits(logits, [seq])[0].tolist() == pytest.approx(expected)


def test_logit_bias_matches_transformers_sequence_bias():
    logits = _logits(2, seed=1)
    bias = ((3, 2.5), (7, -100.0), (31, 0.25))
    seqs = [_seq(SamplingParams(logit_bias=bias), [4, 5]), _seq(SamplingParams(), [4, 5])]
    ref = SequenceBiasLogitsProcessor([[[t], b] for t, b in bias])(torch.tensor([[4, 5]]), logits[:1])
    ours = adjust_logits(logits, seqs)
    torch.testing.assert_close(ours[0], ref[0])
    assert torch.equal(ours[1], logits[1])


@pytest.mark.parametrize("num_output", [0, 2, 3, 4])
def test_min_tokens_matches_transformers(num_output):
    logits = _logits(2, seed=2)
    prompt, output = [5, 6, 7], list(range(10, 10 + num_output))
    eos, stops = (1, 2), (9, 30)
    seqs = [
        _seq(SamplingParams(min_tokens=3, stop_token_ids=stops), prompt, output),
        _seq(SamplingParams(min_tokens=3, stop_token_ids=stops, ignore_eos=True), prompt, output),
    ]
    ours = adjust_logits(logits, seqs, eos_token_ids=eos)
    for row, masked in enumerate([[*eos, *stops], list(stops)]):  # ignore_eos: EOS does not stop it
        hf = MinNewTokensLengthLogitsProcessor(len(prompt), 3, masked)
        ref = hf(torch.tensor([prompt + output]), logits[row : row + 1])
        torch.testing.assert_close(ours[row], ref[0], rtol=0, atol=0)


def test_min_p_after_temperature_matches_transformers():
    logits = _logits(3, seed=3)
    cases = [(0.7, 0.05), (1.0, 0.2), (1.6, 0.5)]
    probs = sampling_probs(logits, [SamplingParams(temperature=t, min_p=m) for t, m in cases])
    for i, (t, m) in enumerate(cases):
        warped = MinPLogitsWarper(m)(None, TemperatureLogitsWarper(t)(None, logits[i : i + 1]))
        torch.testing.assert_close(probs[i], torch.softmax(warped[0], dim=-1))
        assert (probs[i] == 0).sum() > 0  # the filter did drop tokens


# -- sampling from the adjusted logits -------------------------------------------------------------


def test_greedy_rows_take_argmax_of_adjusted_logits():
    logits = _logits(1, seed=4)
    top = int(logits.argmax())
    seq = _seq(
        SamplingParams(temperature=0.0, repetition_penalty=2.0, logit_bias=((3, 5.0),)), [top, 8], [top]
    )
    ref = RepetitionPenaltyLogitsProcessor(2.0)(torch.tensor([[top, 8, top]]), logits)
    ref = SequenceBiasLogitsProcessor([[[3], 5.0]])(None, ref)
    tokens, _ = sample(logits, [seq])
    assert tokens == [int(ref.argmax())]
    assert tokens != [top]  # the case means something: the raw argmax lost


def test_seeded_draws_follow_the_adjusted_distribution():
    logits = torch.tensor([[2.0, 1.5, 1.0, 0.2, -0.5, -3.0]])
    params = [SamplingParams(temperature=0.8, min_p=0.1, repetition_penalty=1.5, seed=i) for i in range(4000)]
    tokens, _ = sample(logits.repeat(4000, 1), [_seq(p, [0, 4], [2]) for p in params])
    ref = RepetitionPenaltyLogitsProcessor(1.5)(torch.tensor([[0, 4, 2]]), logits)
    ref = MinPLogitsWarper(0.1)(None, TemperatureLogitsWarper(0.8)(None, ref))
    expected = torch.softmax(ref[0], dim=-1)
    observed = torch.bincount(torch.tensor(tokens), minlength=6).float() / len(tokens)
    assert set(tokens) == set(expected.nonzero().flatten().tolist())
    torch.testing.assert_close(observed, expected, rtol=0, atol=0.03)


def test_mixed_batch_rows_sample_as_they_do_alone():
    logits = _logits(6, seed=5)
    prompt, output = _history(6)
    params = [
        SamplingParams(temperature=0.0),
        SamplingParams(temperature=0.0, frequency_penalty=1.5, min_tokens=4, stop_token_ids=(3,)),
        SamplingParams(temperature=0.9, seed=11),
        SamplingParams(temperature=0.9, seed=12, min_p=0.3, presence_penalty=-1.0, logprobs=2),
        SamplingParams(temperature=1.2, seed=13, top_k=5, logit_bias=((0, 3.0),), repetition_penalty=1.2),
        SamplingParams(temperature=0.7, seed=14, top_p=0.8),
    ]
    seqs = [_seq(p, prompt, output) for p in params]
    tokens, logprobs = sample(logits, seqs, eos_token_ids=(1,))
    for i, seq in enumerate(seqs):
        alone, alone_lp = sample(logits[i : i + 1], [seq], eos_token_ids=(1,))
        assert tokens[i] == alone[0]
        assert logprobs[i] == alone_lp[0]


def test_rows_without_adjustments_keep_the_logits_untouched():
    logits = _logits(2, seed=7)
    seqs = [_seq(SamplingParams(temperature=0.0), [1, 2]), _seq(SamplingParams(top_k=3), [1, 2], [5])]
    assert adjust_logits(logits, seqs) is logits


# -- validation ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"presence_penalty": 2.5}, "presence_penalty"),
        ({"presence_penalty": "1"}, "presence_penalty"),
        ({"frequency_penalty": -2.1}, "frequency_penalty"),
        ({"frequency_penalty": float("inf")}, "frequency_penalty"),
        ({"repetition_penalty": 0.0}, "repetition_penalty"),
        ({"repetition_penalty": 2.5}, "repetition_penalty"),
        ({"min_p": 1.5}, "min_p"),
        ({"min_p": -0.1}, "min_p"),
        ({"logit_bias": ((-1, 1.0),)}, "logit_bias"),
        ({"logit_bias": ((1, 101.0),)}, "logit_bias"),
        ({"logit_bias": ((1, 2.0, 3.0),)}, "logit_bias"),
        ({"logit_bias": 7}, "logit_bias"),
        ({"min_tokens": -1}, "min_tokens"),
        ({"min_tokens": 17, "max_tokens": 16}, "min_tokens"),
        ({"min_tokens": 1.5}, "min_tokens"),
        ({"prompt_logprobs": -1}, "prompt_logprobs"),
        ({"prompt_logprobs": 1.0}, "prompt_logprobs"),
    ],
)
def test_invalid_adjustment_values(kwargs, field):
    with pytest.raises(ValueError, match=field):
        SamplingParams(**kwargs)


def test_logit_bias_is_normalised():
    params = SamplingParams(logit_bias=[[3, 1], (5, -2.5), (3, 4)])  # a repeated id keeps its last bias
    assert params.logit_bias == ((3, 4.0), (5, -2.5))
    assert all(type(t) is int and type(b) is float for t, b in params.logit_bias)
    assert SamplingParams(logit_bias={7: 1}).logit_bias == ((7, 1.0),)


# -- through the engine, against transformers' generate --------------------------------------------


@pytest.fixture(scope="module")
def llm(tiny_model) -> LLM:
    return LLM(str(tiny_model), page_size=8, num_pages=256, max_num_batched_tokens=32)


def _hf_generate(path, prompt: list[int], max_new: int, **kwargs) -> list[int]:
    ids = torch.tensor([prompt])
    with torch.no_grad():
        out = hf_model(path).generate(
            ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new, do_sample=False,
            pad_token_id=0, **kwargs,
        )  # fmt: skip
    return out[0, len(prompt) :].tolist()


def test_engine_repetition_penalty_matches_transformers(llm, tiny_model):
    prompt = mixed_prompts(250, seed=9)[1]
    free = llm.generate([prompt], SamplingParams(temperature=0.0, max_tokens=16, ignore_eos=True))[0]
    params = SamplingParams(temperature=0.0, max_tokens=16, repetition_penalty=1.8, ignore_eos=True)
    out = llm.generate([prompt], params)[0]
    assert out.token_ids == _hf_generate(tiny_model, prompt, 16, repetition_penalty=1.8, eos_token_id=None)
    assert out.token_ids != free.token_ids  # the penalty changed something


def test_engine_logit_bias_matches_transformers(llm, tiny_model):
    prompt = mixed_prompts(250, seed=10)[2]
    free = llm.generate([prompt], SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True))[0]
    bias = {free.token_ids[0]: -100.0, free.token_ids[3]: 4.0}
    params = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True, logit_bias=bias)
    out = llm.generate([prompt], params)[0]
    ref = _hf_generate(
        tiny_model, prompt, 12, sequence_bias={(t,): b for t, b in bias.items()}, eos_token_id=None
    )
    assert out.token_ids == ref and out.token_ids != free.token_ids


def test_engine_min_tokens_matches_transformers(llm, tiny_model):
    prompt = mixed_prompts(250, seed=8)[1]
    free = llm.generate([prompt], SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True))[0]
    eos, stop = free.token_ids[1], free.token_ids[2]
    cfg = llm.engine.model_cfg
    llm.engine.model_cfg = dataclasses.replace(cfg, eos_token_ids=(eos,))  # declare that token the eos
    try:
        params = SamplingParams(temperature=0.0, max_tokens=12, min_tokens=6, stop_token_ids=(stop,))
        out = llm.generate([prompt], params)[0]
    finally:
        llm.engine.model_cfg = cfg
    ref = _hf_generate(tiny_model, prompt, 12, min_new_tokens=6, eos_token_id=[eos, stop])
    assert out.token_ids == ref
    assert len(out.token_ids) >= 6 and not {eos, stop} & set(out.token_ids[:6])


def test_engine_rows_with_adjustments_do_not_change_their_neighbours(llm):
    prompts = mixed_prompts(250, seed=11)[:4]
    params = [
        SamplingParams(temperature=0.0, max_tokens=10, ignore_eos=True),
        SamplingParams(
            temperature=0.0, max_tokens=10, ignore_eos=True, frequency_penalty=1.0, presence_penalty=0.5
        ),
        SamplingParams(
            temperature=0.9, max_tokens=10, ignore_eos=True, seed=5, min_p=0.1, repetition_penalty=1.3
        ),
        SamplingParams(temperature=0.9, max_tokens=10, ignore_eos=True, seed=6, top_p=0.9),
    ]
    together = llm.generate(prompts, params)
    alone = [llm.generate([p], sp)[0] for p, sp in zip(prompts, params)]
    assert [o.token_ids for o in together] == [o.token_ids for o in alone]


def test_engine_rejects_logit_bias_outside_the_vocabulary(llm):
    vocab = llm.engine.model_cfg.vocab_size
    with pytest.raises(ValueError, match=f"logit_bias token id {vocab} is outside the vocabulary"):
        llm.generate([[3, 4]], SamplingParams(logit_bias=((vocab, 1.0),)))
