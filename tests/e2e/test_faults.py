"""Faults against a real cluster (2 prefill + 2 decode workers, store nodes, Redis, router):
a client that hangs up, a dead store node, a dead prefill worker, a dead decode worker mid-stream.
Tests run in file order; each leaves the cluster degraded for the next."""

from __future__ import annotations

import concurrent.futures as futures
import os
import signal
import time

import openai
import pytest
import requests

from engine import LLM, SamplingParams
from tests.e2e.test_serving import client, start
from worker.registry import WorkerRegistry

pytestmark = pytest.mark.slow

PREFIX = "You are a careful assistant who answers briefly. " * 10


@pytest.fixture(scope="module")
def cluster(default_model):
    c = start(default_model, num_prefill=2, num_decode=2, policy="round_robin")
    yield c
    c.stop()


@pytest.fixture(scope="module")
def model_id(cluster) -> str:
    return client(cluster).models.list().data[0].id


def live_workers(cluster) -> dict:
    registry = WorkerRegistry(cluster.redis_url)
    try:
        return {w.info.worker_id: w for w in registry.live()}
    finally:
        registry.close()


def wait_until(predicate, timeout_s: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def all_idle(cluster) -> bool:
    live = live_workers(cluster)
    return all(w.load.num_running == 0 and w.load.free_pages == w.load.total_pages for w in live.values())


def long_request(cluster, model_id: str, n: int = 400) -> requests.Response:
    """Open a streaming completion (raw HTTP, so the test controls when to hang up)."""
    body = {"model": model_id, "prompt": "Count slowly:", "max_tokens": n, "temperature": 0,
            "stream": True, "ignore_eos": True}  # fmt: skip
    resp = requests.post(f"{cluster.url}/v1/completions", json=body, stream=True, timeout=60)
    return resp


def test_client_disconnect_frees_kv_on_both_sides(cluster, model_id):
    wait_until(lambda: all_idle(cluster), what="an idle cluster")
    resp = long_request(cluster, model_id)
    assert resp.status_code == 200
    lines = resp.iter_lines(decode_unicode=True)
    for _ in range(5):
        next(lines)
    decode = resp.headers["x-tandem-decode"]

    def holds_pages() -> bool:
        load = live_workers(cluster)[decode].load  # reports are ~0.5 s apart
        return load.num_running == 1 and load.free_pages < load.total_pages

    wait_until(holds_pages, timeout_s=10, what=f"{decode} to report the running request")
    resp.close()  # the client hangs up mid-stream
    wait_until(lambda: all_idle(cluster), timeout_s=15, what="pages freed after the disconnect")


def test_dead_store_node_means_recompute_not_failure(cluster, model_id, default_model):
    c = client(cluster)
    messages = [{"role": "system", "content": PREFIX}, {"role": "user", "content": "Hi"}]
    first = c.chat.completions.with_raw_response.create(
        model=model_id, messages=messages, max_tokens=6, temperature=0
    )
    owner = first.headers["x-tandem-prefill"]  # its store node holds the prefix's chunks now
    cluster.proc(f"store-{owner.split('-')[1]}").popen.kill()
    expect = (
        LLM(str(default_model), num_pages=64)
        .chat(messages, SamplingParams(temperature=0.0, max_tokens=6))
        .text
    )
    for _ in range(2):  # round robin: one of these lands on the other prefill worker, whose fetch fails
        resp = c.chat.completions.create(model=model_id, messages=messages, max_tokens=6, temperature=0)
        assert resp.choices[0].message.content == expect


def test_dead_prefill_worker_gets_no_more_requests(cluster, model_id):
    cluster.proc("prefill-1").popen.kill()
    wait_until(lambda: "prefill-1" not in live_workers(cluster), timeout_s=15, what="prefill-1 to drop out")
    c = client(cluster)
    for i in range(3):
        raw = c.completions.with_raw_response.create(
            model=model_id, prompt=f"Say {i}", max_tokens=4, temperature=0
        )
        assert raw.headers["x-tandem-prefill"] == "prefill-0"
        assert raw.parse().choices[0].text


def test_dead_decode_worker_fails_its_stream_only(cluster, model_id):
    resp_a = long_request(cluster, model_id, n=300)
    victim = resp_a.headers["x-tandem-decode"]
    resp_b = None
    for _ in range(4):  # round robin puts the next request on the other decode worker
        candidate = long_request(cluster, model_id, n=40)
        if candidate.headers["x-tandem-decode"] != victim:
            resp_b = candidate
            break
        candidate.close()
    assert resp_b is not None, "could not place a request on the other decode worker"
    lines_a = resp_a.iter_lines(decode_unicode=True)
    for _ in range(3):
        next(lines_a)
    cluster.proc(victim).popen.kill()

    def finish(resp) -> list[str]:
        return [line for line in resp.iter_lines(decode_unicode=True) if line]

    with futures.ThreadPoolExecutor(2) as pool:
        rest_a, rest_b = pool.map(finish, [resp_a, resp_b])
    assert any('"error"' in line for line in rest_a), f"no error event in {rest_a[-3:]}"
    assert rest_b[-1] == "data: [DONE]" and not any('"error"' in line for line in rest_b)
    wait_until(lambda: victim not in live_workers(cluster), timeout_s=15, what=f"{victim} to drop out")
    c = client(cluster)
    for i in range(2):
        raw = c.completions.with_raw_response.create(
            model=model_id, prompt=f"Say {i}", max_tokens=4, temperature=0
        )
        assert raw.headers["x-tandem-decode"] != victim


def test_bad_input_gets_openai_errors_and_the_cluster_keeps_serving(cluster, model_id):
    c = client(cluster)
    bad_calls = [
        (400, lambda: c.chat.completions.create(model=model_id, messages=[], max_tokens=4)),
        (400, lambda: c.completions.create(model=model_id, prompt="", max_tokens=4)),
        (404, lambda: c.completions.create(model="no-such-model", prompt="hi", max_tokens=4)),
        (400, lambda: c.completions.create(model=model_id, prompt="hi", max_tokens=-3)),
        (400, lambda: c.completions.create(model=model_id, prompt="hi", max_tokens=10**9)),
        (400, lambda: c.completions.create(model=model_id, prompt="hi", temperature=-1)),
        (400, lambda: c.completions.create(model=model_id, prompt="hi", top_p=2.0)),
        (400, lambda: c.completions.create(model=model_id, prompt="hi " * 9000, max_tokens=4)),
    ]
    for status, call in bad_calls:
        with pytest.raises(openai.APIStatusError) as err:
            call()
        assert err.value.status_code == status
        assert err.value.body and "message" in err.value.body
    raw = requests.post(
        f"{cluster.url}/v1/completions",
        data=b"{not json",
        headers={"content-type": "application/json"},
        timeout=30,
    )
    assert raw.status_code == 400 and "error" in raw.json()
    ok = c.completions.create(model=model_id, prompt="Hello", max_tokens=3, temperature=0)
    assert ok.choices[0].text


def test_the_supervisor_restarts_what_died_and_it_serves_again(cluster, model_id):
    """What the tests above killed (a prefill worker, a decode worker, a store node), then Redis:
    ``supervise()`` (what ``tandem up`` runs while serving) brings each back under its old name."""
    dead = {p.name for p in cluster.procs if p.popen.poll() is not None}
    assert "prefill-1" in dead and any(name.startswith("decode-") for name in dead), dead
    workers = {p.name for p in cluster.procs if p.name.startswith(("prefill-", "decode-"))}

    def all_back() -> bool:
        cluster.supervise()
        alive = all(p.popen.poll() is None for p in cluster.procs)
        return alive and set(live_workers(cluster)) == workers

    wait_until(all_back, timeout_s=120, what=f"{sorted(dead)} to be restarted and registered")
    c = client(cluster)
    placed = set()
    for i in range(4):  # round robin: both prefill workers, both decode workers
        raw = c.completions.with_raw_response.create(
            model=model_id, prompt=f"Say {i}", max_tokens=4, temperature=0
        )
        assert raw.parse().choices[0].text
        placed |= {raw.headers["x-tandem-prefill"], raw.headers["x-tandem-decode"]}
    assert placed == workers

    os.kill(cluster.redis.pid, signal.SIGKILL)
    wait_until(lambda: cluster.redis.exit_code() is not None, what="redis to die")
    wait_until(all_back, timeout_s=60, what="redis to be restarted and every worker to re-register")
    wait_until(
        lambda: requests.get(f"{cluster.url}/ready", timeout=5).status_code == 200, what="router ready"
    )
    answer = c.completions.create(model=model_id, prompt="Say hi", max_tokens=4, temperature=0)
    assert answer.choices[0].text
