"""The router's Prometheus metrics (``GET /metrics``), under ``tandem_``, in a registry of its own
(so several routers in one process, as in tests, do not collide).

Two sources, one page:

- What the router sees per request (counted by ``RouterMetrics``). Latencies follow vLLM's
  definitions: TTFT from arrival at the router to the first token; time per output token
  ``(e2e - ttft) / (output tokens - 1)`` per finished request; inter-token latency between
  consecutive token events; end-to-end from arrival to the last token. Prompt and cached tokens
  are counted once per request, when its prefill worker reports the prefill (the first token
  event), with the cache hits that worker reported, so they equal the sum of the workers' own
  counters; the conductor's prediction for the same request is counted at the same moment.
- What the cluster reports about itself (``ClusterCollector``, read at scrape time from the
  router's last registry refresh): each worker's load and its own counters (prompt tokens it
  prefilled, tokens it reused, KV transfer bytes and seconds), and each store node's usage.

Hit rates are exported twice: as the counters above (``rate(cached) / rate(prompt)`` in PromQL)
and as gauges of the totals since the router started, which the dashboard shows.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from kvstore.types import NodeInfo
from kvstore.workers import ROLES, TRANSFER_KINDS, WorkerState

_LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160)
_ITL_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
OUTCOMES = ("ok", "invalid", "rejected", "failed", "cancelled")
TIERS = ("local", "store")


@dataclass(frozen=True)
class Totals:
    """The router's per-request totals since it started, as ``/metrics`` shows them now."""

    prompt_tokens: int
    cached_tokens: dict[str, int]  # by tier
    hit_rate: float
    in_flight: int


@dataclass(frozen=True)
class PrefillReport:
    """One request's prefill as the router counts it: where, how long the prompt was, what the
    prefill worker reused (by tier) and what the conductor predicted it would."""

    instance: str
    prompt_tokens: int
    cached_local: int
    cached_store: int
    predicted_local: int
    predicted_store: int


class RouterMetrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "tandem_requests", "Requests by outcome: ok, invalid (4xx), rejected (SLO or no capacity), "
            "failed (a worker or the router failed), cancelled (client went away)", ["outcome"], registry=r,
        )  # fmt: skip
        self.rejections = Counter(
            "tandem_rejections", "Requests rejected before routing, by reason", ["reason"], registry=r
        )
        self.retries = Counter(
            "tandem_retries", "Requests routed again to other workers after a worker failed them", registry=r
        )
        self.worker_failures = Counter(
            "tandem_worker_failures", "Requests a worker failed by being unreachable, lost or refusing the KV "
            "(it then gets no new requests for a few seconds)", ["instance"], registry=r,
        )  # fmt: skip
        self.prompt_tokens = Counter(
            "tandem_prompt_tokens", "Prompt tokens of requests whose prefill finished", registry=r
        )
        self.generation_tokens = Counter("tandem_generation_tokens", "Tokens generated", registry=r)
        self.cached_tokens = Counter(
            "tandem_cached_tokens", "Prompt tokens served from cache as the prefill worker reports, by tier "
            "(local: its own pages; store: fetched from a store node)", ["tier"], registry=r,
        )  # fmt: skip
        self.predicted_cached_tokens = Counter(
            "tandem_predicted_cached_tokens", "Prompt tokens the conductor expected cached on the chosen worker, "
            "by tier, for the requests counted in tandem_cached_tokens", ["tier"], registry=r,
        )  # fmt: skip
        self.instance_prompt_tokens = Counter(
            "tandem_instance_prompt_tokens",
            "tandem_prompt_tokens by prefill instance",
            ["instance"],
            registry=r,
        )
        self.instance_cached_tokens = Counter(
            "tandem_instance_cached_tokens", "tandem_cached_tokens by prefill instance and tier",
            ["instance", "tier"], registry=r,
        )  # fmt: skip
        self.hit_rate = Gauge(
            "tandem_kv_hit_rate", "Cached / prompt tokens since the router started (0 before any)", registry=r
        )
        self.hit_rate_by_tier = Gauge(
            "tandem_kv_hit_rate_by_tier", "tandem_kv_hit_rate by tier", ["tier"], registry=r
        )
        self.instance_hit_rate = Gauge(
            "tandem_instance_kv_hit_rate", "tandem_kv_hit_rate by prefill instance", ["instance"], registry=r
        )
        self.ttft = Histogram(
            "tandem_time_to_first_token_seconds",
            "Time to first token",
            buckets=_LATENCY_BUCKETS_S,
            registry=r,
        )
        self.tpot = Histogram(
            "tandem_time_per_output_token_seconds", "Per finished request: (e2e - ttft) / (output tokens - 1)",
            buckets=_ITL_BUCKETS_S, registry=r,
        )  # fmt: skip
        self.itl = Histogram(
            "tandem_inter_token_latency_seconds",
            "Time between token events",
            buckets=_ITL_BUCKETS_S,
            registry=r,
        )
        self.e2e = Histogram(
            "tandem_e2e_request_latency_seconds",
            "Arrival to last token",
            buckets=_LATENCY_BUCKETS_S,
            registry=r,
        )
        self.in_flight = Gauge("tandem_requests_in_flight", "Requests being generated now", registry=r)
        self.slo = Gauge(
            "tandem_slo_seconds", "The latency targets requests are admitted against: ttft (time to first "
            "token) and tbt (time between tokens)", ["kind"], registry=r,
        )  # fmt: skip
        for outcome in OUTCOMES:
            self.requests.labels(outcome)
        for tier in TIERS:
            self.cached_tokens.labels(tier)
            self.predicted_cached_tokens.labels(tier)
            self.hit_rate_by_tier.labels(tier)
        self._prompt = 0
        self._cached = dict.fromkeys(TIERS, 0)
        self._by_instance: dict[str, list[int]] = {}  # instance -> [prompt, cached]
        self._in_flight = 0

    def set_slo(self, ttft_s: float, tbt_s: float) -> None:
        self.slo.labels("ttft").set(ttft_s)
        self.slo.labels("tbt").set(tbt_s)

    def watch(
        self, workers: Callable[[], Sequence[WorkerState]], nodes: Callable[[], Sequence[NodeInfo]]
    ) -> None:
        """Export the cluster's own reports (see ``ClusterCollector``) from these sources."""
        self.registry.register(ClusterCollector(workers, nodes))

    def prefilled(self, report: PrefillReport) -> None:
        """Count one request's prefill (once per request, when its prefill worker reports it)."""
        cached = {"local": report.cached_local, "store": report.cached_store}
        predicted = {"local": report.predicted_local, "store": report.predicted_store}
        self.prompt_tokens.inc(report.prompt_tokens)
        self.instance_prompt_tokens.labels(report.instance).inc(report.prompt_tokens)
        for tier in TIERS:
            self.cached_tokens.labels(tier).inc(cached[tier])
            self.predicted_cached_tokens.labels(tier).inc(predicted[tier])
            self.instance_cached_tokens.labels(report.instance, tier).inc(cached[tier])
            self._cached[tier] += cached[tier]
        self._prompt += report.prompt_tokens
        instance = self._by_instance.setdefault(report.instance, [0, 0])
        instance[0] += report.prompt_tokens
        instance[1] += sum(cached.values())
        self.hit_rate.set(_ratio(sum(self._cached.values()), self._prompt))
        for tier in TIERS:
            self.hit_rate_by_tier.labels(tier).set(_ratio(self._cached[tier], self._prompt))
        self.instance_hit_rate.labels(report.instance).set(_ratio(instance[1], instance[0]))

    def totals(self) -> Totals:
        return Totals(
            self._prompt,
            dict(self._cached),
            _ratio(sum(self._cached.values()), self._prompt),
            self._in_flight,
        )

    def request_started(self) -> None:
        self._in_flight += 1
        self.in_flight.set(self._in_flight)

    def request_ended(self) -> None:
        self._in_flight -= 1
        self.in_flight.set(self._in_flight)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class ClusterCollector(Collector):
    """Per-worker and per-store-node families, built at scrape time from the router's latest view.

    Counters here are the workers' and nodes' own (they restart from zero with the process; PromQL's
    ``rate`` handles resets). A worker or node that is gone has no series.
    """

    def __init__(
        self, workers: Callable[[], Sequence[WorkerState]], nodes: Callable[[], Sequence[NodeInfo]]
    ) -> None:
        self._workers = workers
        self._nodes = nodes

    def describe(self) -> list[Metric]:
        return []  # families depend on the cluster; don't collect at registration

    def collect(self) -> Iterator[Metric]:
        yield from self._worker_families(self._workers())
        yield from self._store_families(self._nodes())

    @staticmethod
    def _worker_families(workers: Sequence[WorkerState]) -> Iterator[Metric]:
        count = GaugeMetricFamily("tandem_workers", "Live workers by role", labels=["role"])
        for role in ROLES:
            count.add_metric([role], sum(w.info.role == role for w in workers))
        yield count
        labels = ["instance", "role"]
        gauges = {
            "running": ("tandem_worker_running", "Sequences in the worker's running batch"),
            "waiting": ("tandem_worker_waiting", "Requests queued on the worker (not yet running)"),
            "queued_prefill_tokens": ("tandem_worker_queued_prefill_tokens", "Prompt tokens waiting to be prefilled"),
            "free_pages": ("tandem_worker_kv_pages_free", "Free KV cache pages on the worker"),
            "total_pages": ("tandem_worker_kv_pages_total", "KV cache pages on the worker"),
            "step_s": ("tandem_worker_step_seconds", "Recent mean engine step time"),
            "step_fixed_s": ("tandem_worker_step_fixed_seconds", "Fitted step time: the fixed part (conductor input)"),
            "step_per_token_s": ("tandem_worker_step_seconds_per_token", "Fitted step time: the part per token"),
        }  # fmt: skip
        families = {k: GaugeMetricFamily(name, doc, labels=labels) for k, (name, doc) in gauges.items()}
        prompt = CounterMetricFamily(
            "tandem_worker_prompt_tokens",
            "Prompt tokens the worker prefilled, as it counts them",
            labels=labels,
        )
        cached = CounterMetricFamily(
            "tandem_worker_cached_tokens", "Prompt tokens the worker reused, by tier, as it counts them",
            labels=[*labels, "tier"],
        )  # fmt: skip
        moved = CounterMetricFamily(
            "tandem_transfer_bytes", "KV bytes moved by the worker: kv_send / kv_recv (prefill to decode "
            "hand-off), store_put / store_fetch (store nodes)", labels=["instance", "kind"],
        )  # fmt: skip
        spent = CounterMetricFamily(
            "tandem_transfer_seconds", "The worker's time in those transfers (packing, round trips, unpacking)",
            labels=["instance", "kind"],
        )  # fmt: skip
        for w in workers:
            key, load = [w.info.worker_id, w.info.role], w.load
            values = {
                "running": load.num_running,
                "waiting": load.num_waiting,
                "queued_prefill_tokens": load.queued_prefill_tokens,
                "free_pages": load.free_pages,
                "total_pages": load.total_pages,
                "step_s": load.step_ms / 1000,
                "step_fixed_s": load.step_fixed_s,
                "step_per_token_s": load.step_per_token_s,
            }
            for k, family in families.items():
                family.add_metric(key, values[k])
            prompt.add_metric(key, load.prompt_tokens)
            cached.add_metric([*key, "local"], load.cached_local_tokens)
            cached.add_metric([*key, "store"], load.cached_store_tokens)
            for kind in TRANSFER_KINDS:
                moved.add_metric([w.info.worker_id, kind], getattr(load, f"{kind}_bytes"))
                spent.add_metric([w.info.worker_id, kind], getattr(load, f"{kind}_s"))
        yield from families.values()
        yield from (prompt, cached, moved, spent)

    @staticmethod
    def _store_families(nodes: Sequence[NodeInfo]) -> Iterator[Metric]:
        gauges = {
            "bytes_used": GaugeMetricFamily("tandem_store_bytes_used", "Bytes of the node's arena in use", labels=["node"]),
            "capacity_bytes": GaugeMetricFamily("tandem_store_capacity_bytes", "The node's arena size", labels=["node"]),
            "num_chunks": GaugeMetricFamily("tandem_store_chunks", "KV chunks the node holds", labels=["node"]),
        }  # fmt: skip
        counters = {
            "num_evicted": CounterMetricFamily("tandem_store_evictions", "Chunks evicted (LRU)", labels=["node"]),
            "hits": CounterMetricFamily("tandem_store_hits", "Keys asked of the node that it held", labels=["node"]),
            "misses": CounterMetricFamily("tandem_store_misses", "Keys asked of the node it did not hold", labels=["node"]),
        }  # fmt: skip
        for node in nodes:
            for field, family in {**gauges, **counters}.items():
                family.add_metric([node.node_id], getattr(node, field))
        yield from gauges.values()
        yield from counters.values()


def _ratio(part: int, whole: int) -> float:
    return part / whole if whole else 0.0
