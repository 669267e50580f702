"""A whole cluster through a Redis restart (the server comes back empty, on the same port).

During the outage a request either completes or fails with a precise OpenAI-style error. After it,
every worker and store node has registered again by itself, the store nodes have republished what
they hold (so a prompt prefilled before the restart is fetched from the store, not recomputed, by
the worker that never saw it), and answers are the same as before.
"""

from __future__ import annotations

import time

import openai
import pytest
import requests

from cluster.launcher import ClusterConfig, LocalCluster
from kvstore.embedded_redis import EmbeddedRedis
from tests.e2e.test_serving import LONG_CONTEXT

pytestmark = pytest.mark.slow

MESSAGES = [{"role": "system", "content": LONG_CONTEXT}, {"role": "user", "content": "Name a planet."}]


def ask(c: openai.OpenAI, model: str, messages: list[dict] = MESSAGES):
    raw = c.chat.completions.with_raw_response.create(
        model=model, messages=messages, max_tokens=8, temperature=0
    )
    resp = raw.parse()
    return (
        raw.headers["x-tandem-prefill"],
        resp.usage.prompt_tokens_details.cached_tokens,
        resp.choices[0].message.content,
    )


def wait_registered(url: str, workers: dict[str, int], num_nodes: int, timeout_s: float = 30) -> None:
    """Until ``/health`` lists the workers and ``/metrics`` the store nodes again (each re-registers
    on its own retry schedule; a node republishes what it holds when it does)."""
    deadline = time.monotonic() + timeout_s
    while True:
        body = requests.get(f"{url}/health", timeout=5).json()
        metrics = requests.get(f"{url}/metrics", timeout=5).text
        nodes = sum(line.startswith("tandem_store_capacity_bytes{") for line in metrics.splitlines())
        back = body["registry_reachable"]  # not the view the router carried through the outage
        if back and body["status"] == "ok" and body["workers"] == workers and nodes == num_nodes:
            return
        assert time.monotonic() < deadline, f"not registered again: {body}, {nodes} store nodes"
        time.sleep(0.2)


def test_the_cluster_rides_out_a_redis_restart(default_model):
    redis = EmbeddedRedis().start()
    config = ClusterConfig(
        model_dir=default_model, port=0, num_pages=512, num_prefill=2, num_decode=1,
        policy="round_robin", redis_url=redis.url,
    )  # fmt: skip
    cluster = LocalCluster(config)
    try:
        cluster.start()
        c = openai.OpenAI(base_url=f"{cluster.url}/v1", api_key="unused", max_retries=0, timeout=120)
        model = c.models.list().data[0].id
        first_worker, _, answer = ask(c, model)

        redis.stop()
        ask_during_the_outage(c, model)
        redis.start()  # empty, same port
        wait_registered(cluster.url, {"prefill": 2, "decode": 1, "colocated": 0}, num_nodes=3)
        seen = ask_both_prefill_workers(c, model, answer)
        other = next(w for w in seen if w != first_worker)
        assert seen[first_worker] >= 64  # its own pages
        assert seen[other] >= 64, f"{other} recomputed: the store index was not rebuilt ({seen})"
        metrics = requests.get(f"{cluster.url}/metrics", timeout=5).text
        assert 'tandem_workers{role="prefill"} 2.0' in metrics
    finally:
        cluster.stop()
        redis.stop()


def ask_during_the_outage(c: openai.OpenAI, model: str) -> None:
    """No Redis: each request is served (the workers talk over ZeroMQ) or refused precisely. Another
    prompt, so that the worker which never saw MESSAGES still has not when Redis is back."""
    for _ in range(3):
        try:
            assert ask(c, model, [{"role": "user", "content": "Say hi."}])[2]
        except openai.APIStatusError as e:
            assert e.status_code == 503, e
            assert e.body["code"] in ("cluster_unavailable", "no_workers", "worker_lost"), e.body
        time.sleep(0.5)


def ask_both_prefill_workers(
    c: openai.OpenAI, model: str, answer: str, timeout_s: float = 30
) -> dict[str, int]:
    """Ask MESSAGES until both prefill workers have answered it (round robin), each with the
    pre-restart ``answer``; returns the cached tokens by prefill worker."""
    seen = {}
    deadline = time.monotonic() + timeout_s
    while len(seen) < 2:  # round robin: both prefill workers get the prompt
        worker, cached, text = ask(c, model)
        assert text == answer
        seen[worker] = cached
        assert time.monotonic() < deadline
    return seen
