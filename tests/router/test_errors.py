"""Bad requests get OpenAI-shaped 4xx errors with the right status, and the router keeps serving."""

from __future__ import annotations

import http.client
import json
import socket

import pytest
import redis
import requests

from router.config import RouterConfig
from tests.router.conftest import RouterServer
from tests.router.fake_worker import FakeWorker

MAX_MODEL_LEN = 64


@pytest.fixture(scope="module")
def model_name(default_model) -> str:
    return default_model.name


@pytest.fixture(scope="module")
def router(redis_server, default_model):
    """One router and one colocated worker for the whole module (the requests here leave no state)."""
    redis.Redis.from_url(redis_server.url).flushall()
    model = default_model.resolve().name
    worker = FakeWorker(redis_server.url, "c0", "colocated", model=model, max_model_len=MAX_MODEL_LEN)
    worker.behaviour.reply = [28, 29, 30]
    server = RouterServer(
        RouterConfig(
            model_dir=default_model, redis_url=redis_server.url, refresh_interval_s=0.05,
            max_body_bytes=1 << 20, body_timeout_s=2.0,
        )
    )  # fmt: skip
    server.wait_ready(colocated=1)
    yield server
    server.stop()
    worker.stop()


def post(router, path: str, body=None, *, data: bytes | None = None) -> requests.Response:
    if data is not None:
        return requests.post(
            router.url + path, data=data, headers={"content-type": "application/json"}, timeout=10
        )
    return requests.post(router.url + path, json=body, timeout=10)


def assert_error(
    r: requests.Response, status: int, param: str | None = None, code: str | None = None
) -> dict:
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    assert error["type"] == (
        "invalid_request_error" if status < 429 else "server_error" if status >= 500 else "rate_limit_error"
    )
    if param is not None:
        assert error["param"] == param
    if code is not None:
        assert error["code"] == code
    return error


CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"


def test_malformed_bodies(router):
    assert_error(post(router, COMPLETIONS, data=b'{"model": "x", "prompt": '), 400)
    assert_error(post(router, COMPLETIONS, data=b"[1, 2]"), 400)
    assert_error(post(router, CHAT, data=b"\xff\xfe"), 400)


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        (COMPLETIONS, {"prompt": "hi"}, "model"),
        (COMPLETIONS, {}, "model"),
        (COMPLETIONS, {"model": "M"}, "prompt"),
        (CHAT, {"model": "M"}, "messages"),
        (COMPLETIONS, {"model": "M", "prompt": ""}, "prompt"),
        (COMPLETIONS, {"model": "M", "prompt": []}, "prompt"),
        (CHAT, {"model": "M", "messages": []}, "messages"),
        (COMPLETIONS, {"model": 5, "prompt": "hi"}, "model"),
        (COMPLETIONS, {"model": "M", "prompt": 5}, "prompt"),
        (COMPLETIONS, {"model": "M", "prompt": ["a", 7]}, "prompt[1]"),
        (COMPLETIONS, {"model": "M", "prompt": ["a"] * 65}, "prompt"),
        (COMPLETIONS, {"model": "M", "prompt": [1, -2]}, "prompt"),
        (COMPLETIONS, {"model": "M", "prompt": "hi", "max_tokens": "10"}, "max_tokens"),
        (COMPLETIONS, {"model": "M", "prompt": "hi", "max_tokens": -1}, "max_tokens"),
        (COMPLETIONS, {"model": "M", "prompt": "hi", "max_tokens": 0}, "max_tokens"),
        (COMPLETIONS, {"model": "M", "prompt": "hi", "max_tokens": 1.5}, "max_tokens"),
        (COMPLETIONS, {"model": "M", "prompt": "hi", "temperature": "hot"}, "temperature"),
        (COMPLETIONS, {"model": "M", "prompt": "hi", "temperature": 2.5}, "temperature"),
        (COMPLETIONS, {"model": "M", "prompt": "hi", "temperature": -0.1}, "temperature"),
        (COMPLETIONS, {"model": "M", "prompt": "hi", "top_p": 0}, "top_p"),
        (COMPLETIONS, {"model": "M", "prompt": "hi", "top_p": 1.01}, "top_p"),
        (COMPLETIONS, {"model": "M", "prompt": "hi", "top_k": -5}, "top_k"),
        (COMPLETIONS, {"model": "M", "prompt": "hi", "top_k": 10**12}, "top_k"),
        (COMPLETIONS, {"model": "M", "prompt": "hi", "stop": ["x" * 1025]}, "stop"),
        (COMPLETIONS, {"model": "M", "prompt": "hi", "stream": "yes"}, "stream"),
        (COMPLETIONS, {"model": "M", "prompt": "hi", "seed": "1"}, "seed"),
        (COMPLETIONS, {"model": "M", "prompt": "hi", "stop": 3}, "stop"),
        (COMPLETIONS, {"model": "M", "prompt": "hi", "stop": [""]}, "stop"),
        (COMPLETIONS, {"model": "M", "prompt": "hi", "n": 17}, "n"),
        (COMPLETIONS, {"model": "M", "prompt": "hi", "n": 2, "best_of": 3}, "best_of"),
        (COMPLETIONS, {"model": "M", "prompt": "hi", "n": 0}, "n"),
        (COMPLETIONS, {"model": "M", "prompt": "hi", "logprobs": 21}, "logprobs"),
        (COMPLETIONS, {"model": "M", "prompt": "hi", "logprobs": True}, "logprobs"),
        (COMPLETIONS, {"model": "M", "prompt": "hi", "echo": 1}, "echo"),
        (COMPLETIONS, {"model": "M", "prompt": "hi", "suffix": " world"}, "suffix"),
        (COMPLETIONS, {"model": "M", "prompt": "hi", "frobnicate": 1}, "frobnicate"),
        (COMPLETIONS, {"model": "M", "prompt": "hi", "presence_penalty": 2.5}, "presence_penalty"),
        (COMPLETIONS, {"model": "M", "prompt": "hi", "repetition_penalty": 0}, "repetition_penalty"),
        (COMPLETIONS, {"model": "M", "prompt": "hi", "min_p": 1.5}, "min_p"),
        (COMPLETIONS, {"model": "M", "prompt": "hi", "logit_bias": {"x": 1}}, "logit_bias"),
        (COMPLETIONS, {"model": "M", "prompt": "hi", "logit_bias": {"10": 101}}, "10"),
        (COMPLETIONS, {"model": "M", "prompt": "hi", "logit_bias": {"99999999": 1}}, "logit_bias"),
        (COMPLETIONS, {"model": "M", "prompt": "hi", "min_tokens": 5, "max_tokens": 2}, "min_tokens"),
        (COMPLETIONS, {"model": "M", "prompt": "hi", "response_format": {"type": "yaml"}}, "response_format"),
        (COMPLETIONS, {"model": "M", "prompt": "hi", "stream_options": {"include_usage": True}}, "stream_options"),
        (CHAT, {"model": "M", "messages": "hi"}, "messages"),
        (CHAT, {"model": "M", "messages": ["hi"]}, "messages[0]"),
        (CHAT, {"model": "M", "messages": [{"content": "hi"}]}, "role"),
        (CHAT, {"model": "M", "messages": [{"role": "wizard", "content": "hi"}]}, "messages[0].role"),
        (CHAT, {"model": "M", "messages": [{"role": "user"}]}, "messages[0].content"),
        (CHAT, {"model": "M", "messages": [{"role": "user", "content": 7}]}, "messages[0].content"),
        (CHAT, {"model": "M", "messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, "messages[0].content"),
        (CHAT, {"model": "M", "messages": [{"role": "user", "content": "hi"}], "top_logprobs": 2}, "top_logprobs"),
        (CHAT, {"model": "M", "messages": [{"role": "user", "content": "hi"}], "logprobs": True, "top_logprobs": 21}, "top_logprobs"),
        (CHAT, {"model": "M", "messages": [{"role": "user", "content": "hi"}], "echo": True}, "echo"),
        (CHAT, {"model": "M", "messages": [{"role": "user", "content": "hi"}], "store": True}, "store"),
        (CHAT, {"model": "M", "messages": [{"role": "user", "content": "hi"}], "response_format": {"type": "json_schema"}}, "response_format"),
        (CHAT, {"model": "M", "messages": [{"role": "user", "content": "hi"}], "tools": [{"type": "function"}]}, "tools"),
        (CHAT, {"model": "M", "messages": [{"role": "user", "content": "hi"}], "max_completion_tokens": -3}, "max_completion_tokens"),
    ],
)  # fmt: skip
def test_invalid_requests_are_400(router, model_name, path, body, param):
    body = {k: (model_name if v == "M" else v) for k, v in body.items()}
    assert_error(post(router, path, body), 400, param=param)


def test_unknown_model_is_404(router):
    assert_error(
        post(router, COMPLETIONS, {"model": "gpt-5", "prompt": "hi"}), 404, "model", "model_not_found"
    )


def test_context_length(router, model_name):
    long_prompt = "word " * (MAX_MODEL_LEN + 10)
    assert_error(
        post(router, COMPLETIONS, {"model": model_name, "prompt": long_prompt}),
        400,
        "prompt",
        "context_length_exceeded",
    )
    messages = [{"role": "user", "content": long_prompt}]
    assert_error(
        post(router, CHAT, {"model": model_name, "messages": messages}),
        400,
        "messages",
        "context_length_exceeded",
    )
    huge = {"model": model_name, "prompt": "hi", "max_tokens": 10**12}
    assert_error(post(router, COMPLETIONS, huge), 400, "max_tokens", "context_length_exceeded")
    just_fits = {"model": model_name, "prompt": [5] * (MAX_MODEL_LEN - 3), "max_tokens": 3}
    assert post(router, COMPLETIONS, just_fits).status_code == 200
    # no max_tokens: capped by the room left
    r = post(router, COMPLETIONS, {"model": model_name, "prompt": [5] * (MAX_MODEL_LEN - 2)})
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 2


def test_http_level_errors_are_openai_shaped(router):
    r = requests.get(router.url + "/v1/nothing", timeout=5)
    assert_error(r, 404)
    r = requests.get(router.url + "/v1/completions", timeout=5)
    assert r.status_code == 405 and set(r.json()["error"]) == {"message", "type", "param", "code"}


def test_still_serving_after_bad_requests(router, model_name):
    for body in ({"model": model_name}, {"model": model_name, "prompt": "hi", "n": 3}):
        post(router, COMPLETIONS, body)
    ok = post(
        router, CHAT, {"model": model_name, "messages": [{"role": "user", "content": "hi"}], "stop": ["zz"]}
    )
    assert ok.status_code == 200 and ok.json()["choices"][0]["finish_reason"] == "stop"


def test_hostile_bodies_are_4xx_and_the_router_keeps_serving(router, model_name):
    m = model_name.encode()
    lone = b'{"model": "%s", "prompt": "a\\ud800b"}' % m  # a JSON escape of a lone surrogate
    assert "not valid Unicode" in assert_error(post(router, COMPLETIONS, data=lone), 400, "prompt")["message"]
    chat = b'{"model": "%s", "messages": [{"role": "user", "content": "\\udfff"}]}' % m
    assert_error(post(router, CHAT, data=chat), 400, "messages[0].content")
    for depth in (40, 100_000):  # past our bound, and past Python's recursion limit
        nested = b'{"model": "%s", "prompt": "hi", "x": %s%s}' % (m, b"[" * depth, b"]" * depth)
        assert "nests deeper than 32" in assert_error(post(router, COMPLETIONS, data=nested), 400)["message"]
    big = {"model": model_name, "prompt": "word " * 300_000}  # 1.5 MB: over this router's 1 MiB
    assert_error(post(router, COMPLETIONS, big), 413, code="request_too_large")
    chunked = requests.post(  # no Content-Length: counted while it arrives
        router.url + COMPLETIONS, data=iter([b'{"prompt": "'] + [b"x" * 65536] * 20 + [b'"}']),
        headers={"content-type": "application/json"}, timeout=10,
    )  # fmt: skip
    assert_error(chunked, 413, code="request_too_large")
    long = {"model": model_name, "prompt": "w" * 200_000}  # fits the body limit, not the context
    error = assert_error(post(router, COMPLETIONS, long), 400, "prompt", "context_length_exceeded")
    assert "200000 characters are at least" in error["message"]  # refused before tokenizing
    ok = post(router, COMPLETIONS, {"model": model_name, "prompt": "hi", "max_tokens": 3})
    assert ok.status_code == 200


def test_a_body_shorter_than_its_content_length_is_a_408(router, model_name):
    host, port = router.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as conn:
        conn.sendall(
            b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 100\r\n\r\n" + b'{"model": "'
        )
        reply = http.client.HTTPResponse(conn)  # the router answers once its 2 s body timeout passes
        reply.begin()
        body = json.loads(reply.read())
    assert reply.status == 408 and body["error"]["code"] == "request_timeout"
    ok = post(router, COMPLETIONS, {"model": model_name, "prompt": "hi", "max_tokens": 3})
    assert ok.status_code == 200
