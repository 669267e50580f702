"""The router protects the cluster: a deadline on the whole request (aborted on the workers) and
a bound on the requests it serves at once (429 with Retry-After, whatever the policy)."""

from __future__ import annotations

import threading
import time

import pytest
import requests

from tests.kvstore.procs import wait_until
from transfer.messages import AbortTask, GenerateTask

COMPLETIONS = "/v1/completions"


@pytest.fixture(scope="module")
def model_name(default_model) -> str:
    return default_model.name


@pytest.mark.parametrize("stream", [False, True])
def test_a_request_past_its_deadline_fails_and_is_aborted(start_router, start_worker, model_name, stream):
    worker = start_worker("c0", "colocated")
    worker.behaviour.reply = list(range(100, 400))
    worker.behaviour.token_delay_s = 0.05  # 300 tokens: 15 s, far past the deadline
    router = start_router(request_timeout_s=1.0, event_timeout_s=30.0)
    router.wait_ready(colocated=1)
    body = {"model": model_name, "prompt": "hi", "max_tokens": 300, "stream": stream}
    started = time.monotonic()
    r = requests.post(router.url + COMPLETIONS, json=body, timeout=30)
    assert time.monotonic() - started < 10
    if stream:  # the stream had begun: the error is its last event
        assert r.status_code == 200 and '"request_timeout"' in r.text and r.text.endswith("data: [DONE]\n\n")
    else:
        assert r.status_code == 504 and r.json()["error"]["code"] == "request_timeout"
    wait_until(lambda: worker.of_kind(AbortTask), 10, "the abort")  # it stops generating for nobody


def test_beyond_max_in_flight_is_429_for_any_policy(start_router, start_worker, model_name):
    worker = start_worker("c0", "colocated")
    worker.behaviour.reply = list(range(100, 140))
    worker.behaviour.token_delay_s = 0.05
    router = start_router(max_in_flight=1, policy="round_robin")
    router.wait_ready(colocated=1)
    body = {"model": model_name, "prompt": "hi", "max_tokens": 40}
    first: dict = {}
    thread = threading.Thread(
        target=lambda: first.update(r=requests.post(router.url + COMPLETIONS, json=body, timeout=30))
    )
    thread.start()
    try:
        wait_until(lambda: worker.of_kind(GenerateTask), 10, "the first task")  # it is being served
        r = requests.post(router.url + COMPLETIONS, json=body, timeout=30)
        assert r.status_code == 429 and r.json()["error"]["code"] == "too_many_requests"
        assert r.headers["retry-after"] == "1"
    finally:
        thread.join(timeout=30)
    assert first["r"].status_code == 200
    assert requests.post(router.url + COMPLETIONS, json=body, timeout=30).status_code == 200  # room again
