"""The OpenAI parameters beyond plain text, end to end: a real disaggregated cluster (1 prefill,
1 decode, store nodes, Redis) talked to with the official ``openai`` client, every output checked
against the offline engine run with the same parameters."""

from __future__ import annotations

import json
import time

import openai
import pytest
import redis
import requests

from cluster.launcher import WORKER_PAGE_SIZE, ClusterConfig, LocalCluster
from engine import LLM, SamplingParams
from router.structured import grammar_for
from router.tokenizer import TextTokenizer
from transfer.messages import Sampling
from worker.registry import PREFIX

pytestmark = pytest.mark.slow

PROMPT = "The three primary colors are"
OTHER = "Once upon a time, in a small village,"


@pytest.fixture(scope="module")
def offline(default_model) -> LLM:
    return LLM(str(default_model), num_pages=256)


@pytest.fixture(scope="module")
def tokenizer(default_model) -> TextTokenizer:
    return TextTokenizer(default_model)


@pytest.fixture(scope="module")
def cluster(one_by_one):
    return one_by_one


@pytest.fixture(scope="module")
def client(cluster) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{cluster.url}/v1", api_key="unused", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def model(client) -> str:
    return client.models.list().data[0].id


def run_offline(offline: LLM, prompt, **params):
    return offline.generate([prompt], SamplingParams(**params))[0]


def test_completion_logprobs_match_offline(client, model, offline, tokenizer):
    out = run_offline(offline, PROMPT, temperature=0.0, max_tokens=8, logprobs=3, ignore_eos=True)
    extra = {"ignore_eos": True}
    resp = client.completions.create(
        model=model, prompt=PROMPT, max_tokens=8, temperature=0, logprobs=3, extra_body=extra
    )
    lp = resp.choices[0].logprobs
    assert lp.tokens == [tokenizer.token_text(t) for t in out.token_ids]
    assert lp.token_logprobs == pytest.approx([e.logprob for e in out.logprobs], abs=1e-3)
    for top, entry in zip(lp.top_logprobs, out.logprobs):
        want = {tokenizer.token_text(t): v for t, v in entry.top.items()}
        assert set(want) <= set(top) and len(top) <= 4  # the top 3 and the chosen token
        assert [top[k] for k in want] == pytest.approx(list(want.values()), abs=1e-3)
    assert lp.text_offset == [sum(len(t) for t in lp.tokens[:i]) for i in range(len(lp.tokens))]
    stream = client.completions.create(
        model=model, prompt=PROMPT, max_tokens=8, temperature=0, logprobs=3, stream=True, extra_body=extra
    )
    streamed = [
        t
        for chunk in stream
        if chunk.choices and chunk.choices[0].logprobs
        for t in chunk.choices[0].logprobs.token_logprobs
    ]
    assert streamed == pytest.approx(lp.token_logprobs, abs=1e-3)


def test_echo_scores_the_prompt_as_lm_eval_asks(client, model, offline, tokenizer):
    """lm-evaluation-harness's loglikelihood: echo, logprobs 1, max_tokens 0 (the prompt alone)."""
    ids = tokenizer.encode(PROMPT + " red, yellow and blue")
    out = run_offline(offline, ids, temperature=0.0, max_tokens=1, prompt_logprobs=1)
    resp = client.completions.create(
        model=model, prompt=ids, max_tokens=0, temperature=0, logprobs=1, echo=True
    )
    choice = resp.choices[0]
    assert choice.text == tokenizer.decode(ids) and choice.finish_reason == "length"
    assert choice.logprobs.token_logprobs[0] is None and len(choice.logprobs.token_logprobs) == len(ids)
    want = [e.logprob for e in out.prompt_logprobs[1:]]
    assert choice.logprobs.token_logprobs[1:] == pytest.approx(want, abs=1e-3)
    assert resp.usage.completion_tokens == 0 and resp.usage.prompt_tokens == len(ids)
    with_answer = client.completions.create(
        model=model, prompt=PROMPT, max_tokens=4, temperature=0, echo=True
    )
    assert with_answer.choices[0].text.startswith(PROMPT) and len(with_answer.choices[0].text) > len(PROMPT)


def published(cluster: LocalCluster, worker_id: str, after: float) -> dict[str, str]:
    """A worker's load as it published it after wall-clock time ``after`` (its loop snapshots its
    counters every turn, a few ms apart: a report published later counts all finished work)."""
    r = redis.Redis.from_url(cluster.redis_url, decode_responses=True)
    deadline = time.monotonic() + 15
    try:
        while True:
            load = r.hgetall(f"{PREFIX}worker:{worker_id}")
            if float(load.get("updated_at", 0)) > after:
                return load
            assert time.monotonic() < deadline, f"{worker_id} published nothing after {after}"
            time.sleep(0.05)
    finally:
        r.close()


def test_n_choices_share_one_prefill_and_one_hand_off(cluster, client, model, offline, tokenizer):
    prompt_tokens = len(tokenizer.encode(PROMPT))
    started = time.time()
    prefill_before, decode_before = (
        published(cluster, "prefill-0", started),
        published(cluster, "decode-0", started),
    )
    resp = client.completions.create(model=model, prompt=PROMPT, max_tokens=10, temperature=0.9, seed=7, n=3)
    done = time.time()
    assert [c.index for c in resp.choices] == [0, 1, 2]
    for c in resp.choices:  # each choice samples what it would alone, with a seed of its own
        out = run_offline(
            offline, PROMPT, temperature=0.9, max_tokens=10, seed=Sampling(seed=7).for_choice(c.index).seed
        )
        assert c.text == out.text
    assert len({c.text for c in resp.choices}) > 1
    prefill_after, decode_after = published(cluster, "prefill-0", done), published(cluster, "decode-0", done)
    prefilled = int(prefill_after["prompt_tokens"]) - int(prefill_before["prompt_tokens"])
    assert prefilled == prompt_tokens  # one prefill for the three choices
    moved = int(decode_after["kv_recv_bytes"]) - int(decode_before["kv_recv_bytes"])
    one_prompt = -(-prompt_tokens // WORKER_PAGE_SIZE) * WORKER_PAGE_SIZE * offline.engine.kv_bytes_per_token
    assert moved == one_prompt  # and one hand-off of the prompt's pages, shared by the three on decode


def test_batched_prompts(client, model, offline, tokenizer):
    extra = {"ignore_eos": True}
    batch = client.completions.create(
        model=model, prompt=[PROMPT, OTHER], max_tokens=8, temperature=0, n=2, extra_body=extra
    )
    texts = [c.text for c in sorted(batch.choices, key=lambda c: c.index)]
    want = [
        run_offline(offline, p, temperature=0.0, max_tokens=8, ignore_eos=True).text for p in (PROMPT, OTHER)
    ]
    assert texts == [want[0], want[0], want[1], want[1]]
    assert batch.usage.completion_tokens == 4 * 8
    assert batch.usage.prompt_tokens == sum(len(tokenizer.encode(p)) for p in (PROMPT, OTHER))
    stream = client.completions.create(
        model=model, prompt=[PROMPT, OTHER], max_tokens=8, temperature=0, stream=True, extra_body=extra
    )
    parts: dict[int, str] = {}
    for chunk in stream:
        for c in chunk.choices:
            parts[c.index] = parts.get(c.index, "") + c.text
    assert parts == {0: want[0], 1: want[1]}


@pytest.mark.parametrize(
    "params",
    [
        {"frequency_penalty": 1.5, "presence_penalty": 0.5},
        {"repetition_penalty": 1.3},
        {"logit_bias": {"11": -100, "30": 5}},
        {"min_tokens": 12, "stop_token_ids": [13]},
        {"min_p": 0.2, "temperature": 0.8, "seed": 3},
    ],
)
def test_sampling_parameters_match_offline(client, model, offline, params):
    body = {"temperature": 0, **params}
    engine = dict(body)
    if "logit_bias" in engine:
        engine["logit_bias"] = tuple((int(k), float(v)) for k, v in engine["logit_bias"].items())
    engine["stop_token_ids"] = tuple(engine.get("stop_token_ids", ()))
    want = run_offline(offline, OTHER, max_tokens=16, **engine).text
    openai_named = {
        k: body.pop(k)
        for k in ("frequency_penalty", "presence_penalty", "logit_bias", "seed", "temperature")
        if k in body
    }
    resp = client.completions.create(
        model=model, prompt=OTHER, max_tokens=16, extra_body=body, **openai_named
    )
    assert resp.choices[0].text == want


def test_chat_logprobs_and_usage_in_every_chunk(client, model, offline, tokenizer):
    messages = [{"role": "user", "content": "Say hello."}]
    want = offline.chat(messages, SamplingParams(temperature=0.0, max_tokens=8, logprobs=2))
    resp = client.chat.completions.create(
        model=model, messages=messages, max_completion_tokens=8, temperature=0, logprobs=True, top_logprobs=2
    )
    content = resp.choices[0].logprobs.content
    assert [c.token for c in content] == [tokenizer.token_text(t) for t in want.token_ids]
    assert [c.logprob for c in content] == pytest.approx([e.logprob for e in want.logprobs], abs=1e-3)
    assert all(len(c.top_logprobs) == 2 for c in content)
    assert b"".join(bytes(c.bytes) for c in content).decode() == tokenizer.decode(want.token_ids)
    stream = client.chat.completions.create(
        model=model, messages=messages, max_completion_tokens=8, temperature=0, stream=True,
        stream_options={"include_usage": True, "continuous_usage_stats": True},
    )  # fmt: skip
    chunks = list(stream)
    counts = [c.usage.completion_tokens for c in chunks if c.choices]
    assert counts == sorted(counts) and counts[-1] == len(want.token_ids)
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == len(want.token_ids)


def test_tokenize_detokenize_and_model_card(cluster, model, tokenizer):
    r = requests.post(f"{cluster.url}/tokenize", json={"model": model, "prompt": PROMPT}, timeout=10)
    assert r.status_code == 200 and r.json()["tokens"] == tokenizer.encode(PROMPT)
    assert r.json()["count"] == len(tokenizer.encode(PROMPT)) and r.json()["max_model_len"] > 0
    chat = requests.post(
        f"{cluster.url}/tokenize", json={"messages": [{"role": "user", "content": "hi"}]}, timeout=10
    )
    assert chat.json()["tokens"] == tokenizer.apply_chat_template([{"role": "user", "content": "hi"}])
    back = requests.post(f"{cluster.url}/detokenize", json={"tokens": r.json()["tokens"]}, timeout=10)
    assert back.json() == {"prompt": PROMPT}
    card = requests.get(f"{cluster.url}/v1/models", timeout=10).json()["data"][0]
    assert card["max_model_len"] == r.json()["max_model_len"]
    assert requests.get(f"{cluster.url}/ready", timeout=10).status_code == 200
    bad = requests.post(f"{cluster.url}/detokenize", json={"tokens": [-1]}, timeout=10)
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "tokens"


def test_response_format_json_schema_matches_offline(client, model, offline):
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
        "required": ["name", "age"],
        "additionalProperties": False,
    }
    response_format = {"type": "json_schema", "json_schema": {"name": "person", "schema": schema}}
    messages = [{"role": "user", "content": "Describe a person as JSON."}]
    want = offline.chat(
        messages, SamplingParams(temperature=0.0, max_tokens=48, grammar=grammar_for(response_format))
    )
    resp = client.chat.completions.create(
        model=model, messages=messages, max_tokens=48, temperature=0, response_format=response_format
    )
    text = resp.choices[0].message.content
    assert text == want.text and resp.choices[0].finish_reason == "stop"
    person = json.loads(text)
    assert set(person) == {"name", "age"} and isinstance(person["age"], int)
    loose = client.chat.completions.create(
        model=model, messages=messages, max_tokens=48, temperature=0.7, seed=1,
        response_format={"type": "json_object"}, stream=True,
    )  # fmt: skip
    assert isinstance(json.loads("".join(c.choices[0].delta.content or "" for c in loose if c.choices)), dict)


def test_streamed_usage_counts_tokens_without_text(client, model):
    """Special tokens (here the end of turn, generated on with ignore_eos) add no text but count."""
    stream = client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "Say hello."}], max_completion_tokens=32,
        temperature=0, stream=True, stream_options={"include_usage": True}, extra_body={"ignore_eos": True},
    )  # fmt: skip
    chunks = list(stream)
    assert chunks[-1].usage.completion_tokens == 32
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) < 32  # some carried no text


@pytest.fixture(scope="module")
def colocated(default_model):
    config = ClusterConfig(model_dir=default_model, port=0, num_pages=512, num_prefill=1, mode="colocated")
    cluster = LocalCluster(config).start()
    yield cluster
    cluster.stop()


def test_the_same_parameters_in_colocated_mode(colocated, offline, tokenizer):
    """One worker prefills and decodes: n choices fork on it, echo scores the prompt there."""
    c = openai.OpenAI(base_url=f"{colocated.url}/v1", api_key="unused", max_retries=0, timeout=120)
    model = c.models.list().data[0].id
    resp = c.completions.create(
        model=model, prompt=PROMPT, max_tokens=10, temperature=0.9, seed=5, n=3, logprobs=2
    )
    for choice in resp.choices:
        want = run_offline(
            offline,
            PROMPT,
            temperature=0.9,
            max_tokens=10,
            seed=Sampling(seed=5).for_choice(choice.index).seed,
            logprobs=2,
        )
        assert choice.text == want.text
        assert choice.logprobs.token_logprobs == pytest.approx([e.logprob for e in want.logprobs], abs=1e-3)
    ids = tokenizer.encode(OTHER)
    scored = c.completions.create(model=model, prompt=ids, max_tokens=0, echo=True, logprobs=0, temperature=0)
    want = run_offline(offline, ids, temperature=0.0, max_tokens=1, prompt_logprobs=0)
    assert scored.choices[0].logprobs.token_logprobs[1:] == pytest.approx(
        [e.logprob for e in want.prompt_logprobs[1:]], abs=1e-3
    )
    penalised = c.completions.create(
        model=model, prompt=OTHER, max_tokens=16, temperature=0, frequency_penalty=1.0
    )
    assert (
        penalised.choices[0].text
        == run_offline(offline, OTHER, temperature=0.0, max_tokens=16, frequency_penalty=1.0).text
    )
