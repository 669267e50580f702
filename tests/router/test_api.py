"""The OpenAI API end to end through a real router, Redis and ZeroMQ, with stand-in workers."""

from __future__ import annotations

import json

import openai
import pytest
import requests

from router.tokenizer import TextTokenizer
from transfer.messages import Sampling

ANSWER = "Hello there! 🤖 How can I help you today?"


@pytest.fixture
def answer_ids(default_model) -> list[int]:
    return TextTokenizer(default_model).encode(ANSWER)


@pytest.fixture
def disagg(start_router, start_worker, answer_ids):
    """1 prefill + 1 decode worker and a router; the workers answer ANSWER."""
    p = start_worker("p0", "prefill")
    d = start_worker("d0", "decode")
    p.behaviour.cached_local, p.behaviour.cached_store = 64, 128
    for w in (p, d):
        w.behaviour.reply = answer_ids
    router = start_router()
    router.wait_ready(prefill=1, decode=1)
    return router, p, d


def client(router) -> openai.OpenAI:
    return openai.OpenAI(base_url=router.url + "/v1", api_key="none", max_retries=0)


def test_models_and_health(disagg, default_model):
    router, _, _ = disagg
    models = client(router).models.list()
    assert [m.id for m in models.data] == [default_model.name]
    health = requests.get(router.url + "/health").json()
    assert health["status"] == "ok" and health["workers"] == {"prefill": 1, "decode": 1, "colocated": 0}


def test_chat_non_streaming(disagg, default_model):
    router, p, d = disagg
    raw = client(router).chat.completions.with_raw_response.create(
        model=default_model.name, messages=[{"role": "user", "content": "Hi!"}], max_tokens=100, temperature=0
    )
    assert raw.headers["x-tandem-prefill"] == "p0" and raw.headers["x-tandem-decode"] == "d0"
    out = raw.parse()
    assert out.choices[0].message.content == ANSWER and out.choices[0].finish_reason == "stop"
    assert out.usage.prompt_tokens_details.cached_tokens == 192
    expected_prompt = TextTokenizer(default_model).apply_chat_template([{"role": "user", "content": "Hi!"}])
    (task,) = p.of_kind(__import__("transfer.messages", fromlist=["GenerateTask"]).GenerateTask)
    assert list(task.token_ids) == expected_prompt and out.usage.prompt_tokens == len(expected_prompt)
    assert task.decode_address == d.info.address
    assert task.sampling == Sampling(
        temperature=0.0, top_p=1.0, top_k=0, seed=None, stop_token_ids=(), ignore_eos=False, max_tokens=100
    )
    assert out.usage.completion_tokens == len(TextTokenizer(default_model).encode(ANSWER))


def test_chat_streaming(disagg, default_model):
    router, _, d = disagg
    d.behaviour.token_delay_s = 0.005
    raw = client(router).chat.completions.with_raw_response.create(
        model=default_model.name, messages=[{"role": "user", "content": "Hi!"}], stream=True,
        stream_options={"include_usage": True},
    )  # fmt: skip
    assert raw.headers["x-tandem-prefill"] == "p0" and raw.headers["x-tandem-decode"] == "d0"
    chunks = list(raw.parse())
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == ANSWER
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage.prompt_tokens_details.cached_tokens == 192


def test_completions_both_ways_and_length(disagg, default_model, answer_ids):
    router, _, _ = disagg
    c = client(router)
    out = c.completions.create(model=default_model.name, prompt="Say hi", max_tokens=5)
    assert out.choices[0].finish_reason == "length" and out.usage.completion_tokens == 5
    assert out.choices[0].text == TextTokenizer(default_model).decode(answer_ids[:5])
    stream = c.completions.create(model=default_model.name, prompt=[1, 2, 3], max_tokens=100, stream=True)
    assert "".join(chunk.choices[0].text for chunk in stream) == ANSWER


def test_default_max_tokens(disagg, default_model):
    router, p, _ = disagg
    c = client(router)
    c.completions.create(model=default_model.name, prompt="x")
    c.chat.completions.create(model=default_model.name, messages=[{"role": "user", "content": "x"}])
    from transfer.messages import GenerateTask

    assert [t.sampling.max_tokens for t in p.of_kind(GenerateTask)] == [16, 256]


def test_raw_sse_format(disagg, default_model):
    router, _, _ = disagg
    body = {"model": default_model.name, "prompt": "x", "stream": True, "max_tokens": 3}
    with requests.post(router.url + "/v1/completions", json=body, stream=True) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        raw = r.content.decode()
    events = raw.split("\n\n")
    assert events[-1] == "" and events[-2] == "data: [DONE]"
    payloads = [json.loads(e[len("data: ") :]) for e in events[:-2]]
    assert all(e.startswith("data: ") for e in events[:-1])
    assert {p["object"] for p in payloads} == {"text_completion"} and payloads[-1]["choices"][0][
        "finish_reason"
    ] == "length"


def test_stop_strings_truncate_and_abort(disagg, default_model):
    router, p, d = disagg
    d.behaviour.token_delay_s = 0.01
    c = client(router)
    out = c.chat.completions.create(
        model=default_model.name, messages=[{"role": "user", "content": "x"}], stop=["How can"]
    )
    assert out.choices[0].message.content == "Hello there! 🤖 " and out.choices[0].finish_reason == "stop"
    stream = c.completions.create(model=default_model.name, prompt="x", stop="🤖", stream=True, max_tokens=50)
    assert "".join(ch.choices[0].text for ch in stream) == "Hello there! "
    from transfer.messages import AbortTask

    assert len(d.wait_for(AbortTask)) >= 1  # the decode worker was told to stop generating


def test_colocated_pool(start_router, start_worker, answer_ids, default_model):
    workers = [start_worker(f"c{i}", "colocated") for i in range(2)]
    for w in workers:
        w.behaviour.reply = answer_ids
    router = start_router(policy="round_robin")
    router.wait_ready(colocated=2)
    c = client(router)
    seen = set()
    for _ in range(2):
        raw = c.chat.completions.with_raw_response.create(
            model=default_model.name, messages=[{"role": "user", "content": "x"}]
        )
        assert raw.headers["x-tandem-prefill"] == raw.headers["x-tandem-decode"]
        seen.add(raw.headers["x-tandem-prefill"])
        assert raw.parse().choices[0].message.content == ANSWER
    assert seen == {"c0", "c1"}
    from transfer.messages import GenerateTask

    assert all(t.decode_address is None for w in workers for t in w.of_kind(GenerateTask))


def test_metrics(disagg, default_model):
    router, _, _ = disagg
    client(router).completions.create(model=default_model.name, prompt="x", max_tokens=4)
    requests.post(router.url + "/v1/completions", json={"model": default_model.name, "prompt": ""})
    assert router.metric('tandem_requests_total{outcome="ok"}') == 1
    assert router.metric('tandem_requests_total{outcome="invalid"}') == 1
    assert router.metric('tandem_cached_tokens_total{tier="local"}') == 64
    assert router.metric('tandem_cached_tokens_total{tier="store"}') == 128
    assert router.metric("tandem_generation_tokens_total") == 4
    assert router.metric("tandem_time_to_first_token_seconds_count") == 1
    assert router.metric("tandem_e2e_request_latency_seconds_count") == 1
