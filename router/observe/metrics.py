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
- What the cluster reports about itself (``cluster_metrics.ClusterCollector``, read at scrape
  time from the router's last registry refresh): each worker's load and its own counters (prompt tokens it
  prefilled, tokens it reused, KV transfer bytes and seconds), and each store node's usage.

Hit rates are exported twice: as the counters above (``rate(cached) / rate(prompt)`` in PromQL)
and as gauges of the totals since the router started, which the dashboard shows.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from kvstore.types import NodeInfo
from router.observe.cluster_metrics import ClusterCollector
from worker.types import WorkerState

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
        self._add_request_families(self.registry)
        self._add_token_families(self.registry)
        self._add_latency_families(self.registry)
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

    def _add_request_families(self, r: CollectorRegistry) -> None:
        """Requests by outcome, rejections, retries, worker failures and requests in flight."""
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
        self.in_flight = Gauge("tandem_requests_in_flight", "Requests being generated now", registry=r)

    def _add_token_families(self, r: CollectorRegistry) -> None:
        """Prompt, generated and cached tokens (overall, by tier, by prefill instance) and hit rates."""
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

    def _add_latency_families(self, r: CollectorRegistry) -> None:
        """The latency histograms (vLLM's definitions, see the module) and the SLOs they are held to."""
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
        self.slo = Gauge(
            "tandem_slo_seconds", "The latency targets requests are admitted against: ttft (time to first "
            "token) and tbt (time between tokens)", ["kind"], registry=r,
        )  # fmt: skip

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


def _ratio(part: int, whole: int) -> float:
    return part / whole if whole else 0.0
