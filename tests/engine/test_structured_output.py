"""Structured output end to end on SmolLM2: a request with a grammar (``router.structured``'s, for an
OpenAI ``response_format``) decodes to JSON that parses and matches its schema, greedy or seeded;
unconstrained rows beside it are untouched; prefill here and decode there, and preemption, change
no token; a grammar that does not compile, or a first token it forbids, is refused."""

from __future__ import annotations

import json

import pytest

from engine import LLM, SamplingParams
from router.structured import grammar_for
from tests.engine.conftest import build_tiny

SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string", "maxLength": 16}, "age": {"type": "integer"}},
    "required": ["name", "age"],
    "additionalProperties": False,
}
PERSON = grammar_for({"type": "json_schema", "json_schema": {"name": "person", "schema": SCHEMA}})
OBJECT = grammar_for({"type": "json_object"})
GREEDY = dict(temperature=0.0, max_tokens=48)
SEEDED = dict(temperature=0.8, seed=3, max_tokens=48)


def conforms(doc: object) -> bool:
    """SCHEMA, checked by hand."""
    return (
        isinstance(doc, dict)
        and set(doc) == {"name", "age"}
        and isinstance(doc["name"], str)
        and len(doc["name"]) <= 16
        and type(doc["age"]) is int
    )


@pytest.fixture(scope="module")
def llm(default_model) -> LLM:
    return LLM(str(default_model), page_size=16, num_pages=64)


@pytest.fixture(scope="module")
def small_llm(default_model) -> LLM:
    """A second engine (the decode side of a split), with so few pages (and none shared) that two
    requests preempt."""
    return LLM(str(default_model), page_size=16, num_pages=7, enable_prefix_caching=False)


def chat(llm: LLM, text: str) -> list[int]:
    return llm.tokenizer.apply_chat_template([{"role": "user", "content": text}])


def person_prompt(llm: LLM) -> list[int]:
    return chat(llm, "Describe Ada Lovelace, aged 36, as JSON with name and age.")


def drain(llm: LLM) -> None:
    while llm.engine.has_unfinished():
        llm.engine.step()


@pytest.mark.parametrize("sampling", [GREEDY, SEEDED], ids=["greedy", "seeded"])
def test_json_schema_output_parses_and_conforms(llm, sampling):
    out = llm.generate([person_prompt(llm)], SamplingParams(**sampling, grammar=PERSON))[0]
    assert out.finish_reason == "stop" and out.token_ids[-1] not in llm.engine.model_cfg.eos_token_ids
    assert conforms(json.loads(out.text)), out.text


@pytest.mark.parametrize(
    "sampling", [GREEDY, {**SEEDED, "temperature": 0.7, "seed": 1}], ids=["greedy", "seeded"]
)
def test_json_object_output_parses(llm, sampling):
    prompt = chat(llm, 'Reply with only a JSON object with one key, "capital", for France.')
    out = llm.generate([prompt], SamplingParams(**sampling, grammar=OBJECT))[0]
    assert out.finish_reason == "stop"
    assert isinstance(json.loads(out.text), dict), out.text


def test_unconstrained_rows_beside_a_constrained_one_are_untouched(llm):
    prompts = [chat(llm, "Name three colours."), chat(llm, "Write a haiku about rain.")]
    plain = [
        SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True),
        SamplingParams(temperature=0.9, seed=5, max_tokens=12, ignore_eos=True, logprobs=2),
    ]
    alone = llm.generate(prompts, plain)
    mixed = llm.generate([person_prompt(llm), *prompts], [SamplingParams(**SEEDED, grammar=PERSON), *plain])
    assert conforms(json.loads(mixed[0].text))
    for a, m in zip(alone, mixed[1:]):
        assert m.token_ids == a.token_ids
    assert [lp.logprob for lp in mixed[2].logprobs] == pytest.approx([lp.logprob for lp in alone[1].logprobs])


def split_generate(prefill: LLM, decode: LLM, prompt: list[int], params: SamplingParams) -> list[int]:
    """Prefill ``prompt`` on one engine, hand its KV and first token to the other, decode there."""
    seq = prefill.engine.add_request(prompt, params, request_id="p", prefill_only=True)
    drain(prefill)
    assert seq.finish_reason == "prefilled"
    kv = prefill.engine.export_kv(seq)
    prefill.engine.release(seq)
    out = decode.engine.add_prefilled(prompt, seq.output_token_ids[0], params, kv, request_id="d")
    drain(decode)
    assert out.finish_reason == "stop" and out.constraint.is_finished
    return out.output_token_ids


@pytest.mark.parametrize("sampling", [GREEDY, SEEDED], ids=["greedy", "seeded"])
def test_prefill_here_decode_there_equals_one_engine(llm, small_llm, sampling):
    params = SamplingParams(**sampling, grammar=PERSON)
    prompt = person_prompt(llm)
    whole = llm.generate([prompt], params)[0].token_ids
    assert split_generate(llm, small_llm, prompt, params) == whole
    assert llm.engine.pool.num_used_pages == 0 and small_llm.engine.pool.num_used_pages == 0


def test_preemption_does_not_replay_the_grammar(llm, small_llm):
    """Two requests outgrow 7 pages: one is preempted and recomputed, its grammar not advanced twice."""
    prompts = [person_prompt(llm), chat(llm, "Describe Alan Turing, aged 41, as JSON with name and age.")]
    params = SamplingParams(**GREEDY, grammar=PERSON)
    before = small_llm.engine.scheduler.num_preemptions
    squeezed = small_llm.generate(prompts, params)
    assert small_llm.engine.scheduler.num_preemptions > before
    assert [o.token_ids for o in squeezed] == [o.token_ids for o in llm.generate(prompts, params)]
    assert all(conforms(json.loads(o.text)) for o in squeezed)


def test_a_grammar_that_does_not_compile_is_refused(llm):
    params = SamplingParams(max_tokens=4, grammar="start: ((")
    prompt = chat(llm, "Hi")
    for call in (llm.engine.validate, llm.engine.add_request):
        with pytest.raises(ValueError, match="does not compile"):
            call(prompt, params)
    assert not llm.engine.has_unfinished()
    with pytest.raises(ValueError, match="grammar must be a str"):
        SamplingParams(grammar={"type": "object"})


def test_a_first_token_the_grammar_forbids_is_refused(llm, small_llm):
    prompt = person_prompt(llm)
    seq = llm.engine.add_request(prompt, SamplingParams(max_tokens=1), request_id="p", prefill_only=True)
    drain(llm)
    kv = llm.engine.export_kv(seq)
    llm.engine.release(seq)
    hello = llm.tokenizer.encode("hello")[0]  # a JSON document starts with "{"
    with pytest.raises(ValueError, match="first token does not match the request's grammar"):
        small_llm.engine.add_prefilled(prompt, hello, SamplingParams(**GREEDY, grammar=PERSON), kv, "d")
    assert not small_llm.engine.has_unfinished()


def test_a_grammar_for_a_model_without_a_tokenizer_is_refused(tmp_path):
    llm = LLM(str(build_tiny("llama", tmp_path)), page_size=8, num_pages=16)
    with pytest.raises(ValueError, match="needs the model's tokenizer"):
        llm.engine.add_request([2, 3, 4], SamplingParams(max_tokens=2, grammar=OBJECT))
