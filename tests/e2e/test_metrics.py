"""``/metrics`` after a replayed workload with shared prefixes, on a real cluster (two prefill
workers with store nodes, one decode worker; round robin, so prompts hit both in the worker's own
pages and through the store).

The router counts each request's prefill once, from its prefill worker's report; every worker
counts the same things itself and publishes them with its heartbeat. The two must agree exactly,
per instance and in total, and agree with what the clients were told in ``usage``.
"""

from __future__ import annotations

import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from cluster.launcher import ClusterConfig, LocalCluster
from tests.e2e.test_serving import LONG_CONTEXT

pytestmark = pytest.mark.slow

USERS = ("Ada", "Grace", "Barbara")


class Scrape:
    """One ``/metrics`` page, sample by sample."""

    def __init__(self, text: str) -> None:
        self.samples: dict[str, list[tuple[dict[str, str], float]]] = defaultdict(list)
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                self.samples[s.name].append((s.labels, s.value))

    def value(self, name: str, **labels: str) -> float:
        found = [v for lab, v in self.samples[name] if all(lab.get(k) == x for k, x in labels.items())]
        assert len(found) == 1, f"{name}{labels}: {len(found)} samples"
        return found[0]

    def by(self, name: str, label: str, **labels: str) -> dict[str, float]:
        out = {}
        for lab, v in self.samples[name]:
            if all(lab.get(k) == x for k, x in labels.items()):
                out[lab[label]] = v
        return out


def scrape(url: str) -> Scrape:
    resp = requests.get(f"{url}/metrics", timeout=10)
    assert resp.status_code == 200
    return Scrape(resp.text)


@pytest.fixture(scope="module")
def cluster(default_model):
    config = ClusterConfig(
        model_dir=default_model, port=0, num_pages=512, num_prefill=2, num_decode=1,
        policy="round_robin",
    )  # fmt: skip
    c = LocalCluster(config).start()
    yield c
    c.stop()


def replay(url: str) -> list[int]:
    """One streamed request, then three users at once, two turns each, all under one long system
    prompt; the second turns carry the first answers. Returns the cached tokens each response
    reported in ``usage``."""
    c = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=120)
    model = c.models.list().data[0].id

    def turn(messages: list[dict]) -> tuple[str, int]:
        resp = c.chat.completions.create(model=model, messages=messages, max_tokens=6, temperature=0)
        return resp.choices[0].message.content, resp.usage.prompt_tokens_details.cached_tokens

    def conversation(user: str) -> list[int]:
        messages = [
            {"role": "system", "content": LONG_CONTEXT},
            {"role": "user", "content": f"My name is {user}. Say hello."},
        ]
        answer, first = turn(messages)
        messages += [{"role": "assistant", "content": answer}, {"role": "user", "content": "Spell my name."}]
        return [first, turn(messages)[1]]

    # one streamed request first (its usage comes in the last chunk): its worker writes the system
    # prompt's chunks to its store node, so the other worker's first prompt fetches them
    stream = c.chat.completions.create(
        model=model, messages=[{"role": "system", "content": LONG_CONTEXT}, {"role": "user", "content": "Hi"}],
        max_tokens=4, temperature=0, stream=True, stream_options={"include_usage": True},
    )  # fmt: skip
    usage = [chunk.usage for chunk in stream if chunk.usage is not None]
    with ThreadPoolExecutor(len(USERS)) as pool:
        cached = [n for per_user in pool.map(conversation, USERS) for n in per_user]
    return [usage[-1].prompt_tokens_details.cached_tokens, *cached]


def settled(url: str, timeout_s: float = 15.0) -> Scrape:
    """The first scrape where the workers' heartbeats (every 0.5 s, read by the router every
    refresh) have caught up with the traffic: prefill workers with the router's count, the decode
    worker with the KV the prefill workers sent, every worker idle. The test then checks everything
    on that scrape."""
    deadline = time.monotonic() + timeout_s
    while True:
        s = scrape(url)
        worker_prompt = sum(s.by("tandem_worker_prompt_tokens_total", "instance").values())
        moved = {
            kind: sum(s.by("tandem_transfer_bytes_total", "instance", kind=kind).values())
            for kind in ("kv_send", "kv_recv")
        }
        busy = sum(s.by("tandem_worker_running", "instance").values()) + sum(
            s.by("tandem_worker_waiting", "instance").values()
        )
        caught_up = (
            worker_prompt == s.value("tandem_prompt_tokens_total")
            and len(set(moved.values())) == 1
            and not busy
        )
        if caught_up or time.monotonic() > deadline:
            return s
        time.sleep(0.2)


def test_counters_equal_what_the_workers_reused(cluster):
    before = scrape(cluster.url)
    assert before.value("tandem_kv_hit_rate") == 0.0
    assert before.value("tandem_workers", role="prefill") == 2
    assert before.value("tandem_workers", role="decode") == 1
    reported_cached = replay(cluster.url)
    bad = requests.post(
        f"{cluster.url}/v1/completions", json={"model": "x", "prompt": "hi", "temperature": -1}, timeout=10
    )
    assert bad.status_code in (400, 404)
    s = settled(cluster.url)

    assert_request_counts(s)
    prompt, cached, prefill_ids = assert_totals_are_the_workers(s, reported_cached)
    assert_hit_rates_are_ratios(s, prompt, cached, prefill_ids)
    assert_kv_moved_byte_for_byte(s)
    assert_store_usage_and_idle_workers(s)
    assert_step_cost_fits(s, prefill_ids)


def assert_request_counts(s: Scrape) -> None:
    """The replay's requests all succeeded and were timed; the bad one was counted as invalid."""
    n = 2 * len(USERS) + 1
    assert s.value("tandem_requests_total", outcome="ok") == n
    assert s.value("tandem_requests_total", outcome="invalid") == 1
    assert s.value("tandem_time_to_first_token_seconds_count") == n
    assert s.value("tandem_e2e_request_latency_seconds_count") == n
    assert s.value("tandem_time_per_output_token_seconds_count") == n


def assert_totals_are_the_workers(
    s: Scrape, reported_cached: list[int]
) -> tuple[float, dict[str, float], set[str]]:
    """The router's prompt and cached-token totals agree with the workers' own counts (in total,
    tier by tier and instance by instance) and with the clients' ``usage``. Returns the prompt total,
    the cached totals by tier and the prefill instances."""
    # the router's totals = the sum of what the workers say they did, tier by tier
    prompt = s.value("tandem_prompt_tokens_total")
    cached = {tier: s.value("tandem_cached_tokens_total", tier=tier) for tier in ("local", "store")}
    assert prompt == sum(s.by("tandem_worker_prompt_tokens_total", "instance").values()) > 0
    for tier in cached:
        assert cached[tier] == sum(s.by("tandem_worker_cached_tokens_total", "instance", tier=tier).values())
    assert cached["local"] > 0 and cached["store"] > 0, cached
    # ... and instance by instance
    prefill_ids = set(s.by("tandem_worker_prompt_tokens_total", "instance", role="prefill"))
    assert len(prefill_ids) == 2
    assert s.by("tandem_instance_prompt_tokens_total", "instance") == s.by(
        "tandem_worker_prompt_tokens_total", "instance", role="prefill"
    )
    for tier in cached:
        assert s.by("tandem_instance_cached_tokens_total", "instance", tier=tier) == s.by(
            "tandem_worker_cached_tokens_total", "instance", role="prefill", tier=tier
        )
    # ... and what the clients were told
    assert sum(reported_cached) == sum(cached.values())
    return prompt, cached, prefill_ids


def assert_hit_rates_are_ratios(
    s: Scrape, prompt: float, cached: dict[str, float], prefill_ids: set[str]
) -> None:
    """Hit-rate gauges are the counters' ratios: overall, by tier and by instance."""
    assert s.value("tandem_kv_hit_rate") == pytest.approx(sum(cached.values()) / prompt, rel=1e-12)
    for tier in cached:
        assert s.value("tandem_kv_hit_rate_by_tier", tier=tier) == pytest.approx(
            cached[tier] / prompt, rel=1e-12
        )
    for instance in prefill_ids:
        inst_prompt = s.value("tandem_instance_prompt_tokens_total", instance=instance)
        inst_cached = sum(s.by("tandem_instance_cached_tokens_total", "tier", instance=instance).values())
        assert s.value("tandem_instance_kv_hit_rate", instance=instance) == pytest.approx(
            inst_cached / inst_prompt
        )
    predicted = sum(s.by("tandem_predicted_cached_tokens_total", "tier").values())
    assert 0 <= predicted <= prompt


def assert_kv_moved_byte_for_byte(s: Scrape) -> None:
    """Every prompt's KV went from a prefill worker to the decode worker, byte for byte."""
    sent = s.by("tandem_transfer_bytes_total", "instance", kind="kv_send")
    received = s.by("tandem_transfer_bytes_total", "instance", kind="kv_recv")
    assert sum(sent.values()) == sum(received.values()) > 0
    assert sum(s.by("tandem_transfer_bytes_total", "instance", kind="store_put").values()) > 0
    assert sum(s.by("tandem_transfer_bytes_total", "instance", kind="store_fetch").values()) > 0
    assert all(v >= 0 for v in s.by("tandem_transfer_seconds_total", "instance", kind="kv_send").values())


def assert_store_usage_and_idle_workers(s: Scrape) -> None:
    """The store nodes' usage, and the workers' queues (idle now)."""
    used = s.by("tandem_store_bytes_used", "node")
    capacity = s.by("tandem_store_capacity_bytes", "node")
    assert len(used) == 3 and set(used) == set(capacity)  # one per prefill and per decode worker
    assert sum(used.values()) > 0 and all(used[n] <= capacity[n] for n in used)
    assert sum(s.by("tandem_store_chunks", "node").values()) > 0
    assert set(s.by("tandem_store_evictions_total", "node")) == set(used)
    assert set(s.by("tandem_worker_waiting", "instance").values()) == {0}
    assert set(s.by("tandem_worker_running", "instance").values()) == {0}, s.by(
        "tandem_worker_running", "instance"
    )
    assert s.value("tandem_slo_seconds", kind="ttft") > 0


def assert_step_cost_fits(s: Scrape, prefill_ids: set[str]) -> None:
    """The step-time line each prefill worker fitted (the conductor's TTFT input) predicts some time."""
    fixed = s.by("tandem_worker_step_fixed_seconds", "instance", role="prefill")
    per_token = s.by("tandem_worker_step_seconds_per_token", "instance", role="prefill")
    assert set(fixed) == set(per_token) == prefill_ids
    assert all(fixed[w] >= 0 and per_token[w] >= 0 and fixed[w] + 100 * per_token[w] > 0 for w in fixed)


def test_a_second_replay_keeps_them_equal(cluster):
    """No drift: after more traffic the totals still match, and every counter only went up."""
    first = settled(cluster.url)
    replay(cluster.url)
    s = settled(cluster.url)
    prompt = s.value("tandem_prompt_tokens_total")
    assert prompt > first.value("tandem_prompt_tokens_total")
    assert prompt == sum(s.by("tandem_worker_prompt_tokens_total", "instance").values())
    for tier in ("local", "store"):
        total = s.value("tandem_cached_tokens_total", tier=tier)
        assert total >= first.value("tandem_cached_tokens_total", tier=tier)
        assert total == sum(s.by("tandem_worker_cached_tokens_total", "instance", tier=tier).values())
