"""Cluster-level behaviour: no workers, SLO rejections, worker failures and deaths, timeouts,
client disconnects (→ AbortTask on both workers)."""

from __future__ import annotations

import json
import socket
import time

import pytest
import requests

from router.conductor import CostModel, Slo
from tests.router.fake_worker import TTL_S
from transfer.messages import INTERNAL, UNAVAILABLE, AbortTask, GenerateTask
from worker.registry import WorkerRegistry
from worker.types import WorkerInfo, WorkerLoad

COMPLETIONS = "/v1/completions"


@pytest.fixture(scope="module")
def model_name(default_model) -> str:
    return default_model.name


def post(router, body, **kwargs) -> requests.Response:
    return requests.post(router.url + COMPLETIONS, json=body, timeout=kwargs.pop("timeout", 10), **kwargs)


def sse_events(r: requests.Response) -> list:
    """The data of every SSE event of a response ("[DONE]" as a string)."""
    out = []
    for event in r.content.decode().split("\n\n"):
        if event:
            data = event.removeprefix("data: ")
            out.append(data if data == "[DONE]" else json.loads(data))
    return out


def test_served_model_name(start_router, start_worker):
    start_worker("c0", "colocated")
    router = start_router(served_model_name="tandem-small")
    router.wait_ready(colocated=1)
    assert requests.get(router.url + "/v1/models", timeout=5).json()["data"][0]["id"] == "tandem-small"
    assert post(router, {"model": "tandem-small", "prompt": "hi"}).status_code == 200


def test_workers_of_another_model_are_left_out(start_router, start_worker, model_name):
    start_worker("c-other", "colocated", model="some-other-model")
    start_worker("c0", "colocated")
    router = start_router()
    assert router.wait_ready(colocated=1)["workers"]["colocated"] == 1  # c-other is not counted
    assert post(router, {"model": model_name, "prompt": "hi"}).headers["x-tandem-prefill"] == "c0"


def test_no_workers_is_503(start_router, model_name):
    router = start_router()
    assert requests.get(router.url + "/ready", timeout=5).status_code == 503
    assert requests.get(router.url + "/health", timeout=5).json()["status"] == "unavailable"
    r = post(router, {"model": model_name, "prompt": "hi"})
    assert r.status_code == 503 and r.json()["error"]["code"] == "no_workers"


def test_prefill_without_decode_is_503(start_router, start_worker, model_name):
    start_worker("p0", "prefill")
    router = start_router()
    router.wait_ready(prefill=1)
    r = post(router, {"model": model_name, "prompt": "hi"})
    assert (
        r.status_code == 503 and r.json()["error"]["code"] == "no_decode" and r.headers["retry-after"] == "1"
    )


def test_tiny_ttft_slo_is_429(start_router, start_worker, model_name):
    start_worker("c0", "colocated", queued_prefill_tokens=5000)
    router = start_router(slo=Slo(ttft_s=0.5, tbt_s=5), costs=CostModel(prefill_per_token_s=1e-3))
    router.wait_ready(colocated=1)
    r = post(router, {"model": model_name, "prompt": "hi"})
    assert r.status_code == 429 and r.json()["error"]["code"] == "ttft_slo"
    assert r.json()["error"]["type"] == "rate_limit_error" and 1 <= int(r.headers["retry-after"]) <= 60
    assert router.metric('tandem_rejections_total{reason="ttft_slo"}') == 1
    # the baselines never reject
    other = start_router(policy="least_loaded", slo=Slo(ttft_s=0.5, tbt_s=5))
    other.wait_ready(colocated=1)
    assert post(other, {"model": model_name, "prompt": "hi"}).status_code == 200


def test_tiny_tbt_slo_is_429(start_router, start_worker, model_name):
    start_worker("p0", "prefill")
    start_worker("d0", "decode", step_ms=500, num_running=8)
    router = start_router(slo=Slo(ttft_s=30, tbt_s=0.1))
    router.wait_ready(prefill=1, decode=1)
    r = post(router, {"model": model_name, "prompt": "hi"})
    assert r.status_code == 429 and r.json()["error"]["code"] == "tbt_slo" and "retry-after" in r.headers


@pytest.mark.parametrize(("code", "status"), [(INTERNAL, 500), (UNAVAILABLE, 503)])
def test_worker_failure_before_the_first_token(start_router, start_worker, model_name, code, status):
    start_worker("c0", "colocated").behaviour.fail = (code, "out of pages")
    router = start_router()
    router.wait_ready(colocated=1)
    for stream in (False, True):
        r = post(router, {"model": model_name, "prompt": "hi", "stream": stream})
        assert r.status_code == status and "out of pages" in r.json()["error"]["message"]
        assert r.headers["x-tandem-prefill"] == "c0"
    assert router.metric('tandem_requests_total{outcome="failed"}') == 2


def test_decode_worker_dies_mid_stream(start_router, start_worker, model_name):
    p = start_worker("p0", "prefill")
    d0, d1 = start_worker("d0", "decode"), start_worker("d1", "decode", num_running=5)
    for w in (p, d0, d1):
        w.behaviour.reply = list(range(100, 400))
    d0.behaviour.token_delay_s = 0.02
    router = start_router(policy="least_loaded")
    router.wait_ready(prefill=1, decode=2)
    with requests.post(router.url + COMPLETIONS, json={"model": model_name, "prompt": "x", "max_tokens": 300, "stream": True},
                       stream=True, timeout=30) as r:  # fmt: skip
        assert r.headers["x-tandem-decode"] == "d0"
        lines = r.iter_lines()
        next(lines)  # the first token arrived: now the decode worker dies
        d0.die()
        events = [line.decode() for line in lines if line]
    assert events[-1] == "data: [DONE]"
    error = json.loads(events[-2].removeprefix("data: "))["error"]
    assert error["code"] == "worker_lost" and "d0" in error["message"]
    router.wait_ready(prefill=1, decode=1)  # d0's heartbeat lapsed
    ok = post(router, {"model": model_name, "prompt": "x", "max_tokens": 3})
    assert ok.status_code == 200 and ok.headers["x-tandem-decode"] == "d1"


def test_request_timeout(start_router, start_worker, model_name):
    start_worker("c0", "colocated").behaviour.silent = True
    router = start_router(event_timeout_s=0.5)
    router.wait_ready(colocated=1)
    r = post(router, {"model": model_name, "prompt": "hi"})
    assert r.status_code == 504 and r.json()["error"]["code"] == "worker_timeout"


def test_unreachable_worker_is_503(start_router, redis_url, model_name):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    registry = WorkerRegistry(redis_url, ttl_s=30)
    info = WorkerInfo("ghost", "colocated", f"tcp://127.0.0.1:{port}", model_name, "ab", 16, 64, 2048)
    registry.publish(info, WorkerLoad(free_pages=10, total_pages=10))
    router = start_router(send_timeout_s=0.3)
    router.wait_ready(colocated=1)
    r = post(router, {"model": model_name, "prompt": "hi"})
    assert r.status_code == 503 and r.json()["error"]["code"] == "worker_unreachable"
    registry.remove("ghost")
    registry.close()


@pytest.mark.parametrize("retries", [0, 1])
def test_a_worker_that_failed_is_avoided_while_others_serve(
    start_router, start_worker, redis_url, model_name, retries
):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    registry = WorkerRegistry(redis_url, ttl_s=30)  # registered, heartbeating, but gone
    info = WorkerInfo("a-ghost", "colocated", f"tcp://127.0.0.1:{port}", model_name, "ab", 16, 64, 2048)
    registry.publish(info, WorkerLoad(free_pages=1000, total_pages=1000))
    start_worker("b0", "colocated")
    router = start_router(send_timeout_s=0.3, max_retries=retries)
    router.wait_ready(colocated=2)
    try:
        first = post(router, {"model": model_name, "prompt": "hi"})  # equal candidates: a-ghost by id
        if retries:  # routed again, to the other worker, before anything was sent: the client never knows
            assert first.status_code == 200
            assert first.headers["x-tandem-prefill"] == "b0" and first.headers["x-tandem-retries"] == "1"
        else:
            assert first.status_code == 503 and first.json()["error"]["code"] == "worker_unreachable"
        for _ in range(3):  # the ghost still heartbeats, but the router avoids it now
            r = post(router, {"model": model_name, "prompt": "hi"})
            assert r.status_code == 200 and r.headers["x-tandem-prefill"] == "b0"
            assert "x-tandem-retries" not in r.headers
        assert router.metric('tandem_requests_total{outcome="ok"}') == 3 + retries
        assert router.metric('tandem_requests_total{outcome="failed"}') == 1 - retries
        assert router.metric("tandem_retries_total") == retries
        assert router.metric('tandem_worker_failures_total{instance="a-ghost"}') == 1
    finally:
        registry.remove("a-ghost")
        registry.close()


@pytest.mark.parametrize("stream", [True, False])
def test_client_disconnect_aborts_on_both_workers(start_router, start_worker, model_name, stream):
    p, d = start_worker("p0", "prefill"), start_worker("d0", "decode")
    for w in (p, d):
        w.behaviour.reply = list(range(100, 400))
    d.behaviour.token_delay_s = 0.05
    router = start_router()
    router.wait_ready(prefill=1, decode=1)
    body = {"model": model_name, "prompt": "x", "max_tokens": 300, "stream": stream}
    timed_out = (requests.exceptions.ReadTimeout, requests.exceptions.ConnectionError)  # the client gives up
    with (
        pytest.raises(timed_out),
        requests.post(router.url + COMPLETIONS, json=body, stream=True, timeout=0.5) as r,
    ):
        for _ in r.iter_lines():
            pass
    (request_id,) = {t.request_id for t in p.of_kind(GenerateTask)}
    assert [a.request_id for a in d.wait_for(AbortTask)] == [request_id]
    assert [a.request_id for a in p.wait_for(AbortTask)] == [request_id]
    deadline = time.monotonic() + 5
    while router.metric('tandem_requests_total{outcome="cancelled"}') != 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert router.metric('tandem_requests_total{outcome="cancelled"}') == 1


def test_prefill_worker_dies_before_answering(start_router, start_worker, model_name):
    p0, _ = start_worker("p0", "prefill"), start_worker("d0", "decode")
    p0.behaviour.silent = True
    router = start_router()
    router.wait_ready(prefill=1, decode=1)
    start = time.monotonic()
    p0.die()
    r = post(router, {"model": model_name, "prompt": "x"})
    assert r.status_code == 503 and r.json()["error"]["code"] in ("worker_lost", "no_workers")
    assert time.monotonic() - start < TTL_S + 3
