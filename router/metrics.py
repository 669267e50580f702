"""The router's Prometheus metrics (``GET /metrics``), under ``tandem_``, in a registry of its own
(so several routers in one process, as in tests, do not collide).

Latencies follow vLLM's definitions: TTFT from arrival at the router to the first token event;
inter-token latency between consecutive token events; end-to-end from arrival to the last event.
"""

from __future__ import annotations

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

_LATENCY_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160)
_ITL_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
OUTCOMES = ("ok", "invalid", "rejected", "failed", "cancelled")
TIERS = ("local", "store")


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
        self.prompt_tokens = Counter("tandem_prompt_tokens", "Prompt tokens of routed requests", registry=r)
        self.generation_tokens = Counter("tandem_generation_tokens", "Tokens generated", registry=r)
        self.cached_tokens = Counter(
            "tandem_cached_tokens", "Prompt tokens served from cache as the prefill worker reports, by tier "
            "(local: its own pages; store: fetched from a store node)", ["tier"], registry=r,
        )  # fmt: skip
        self.predicted_cached_tokens = Counter(
            "tandem_predicted_cached_tokens", "Prompt tokens the conductor expected cached on the chosen worker, by tier",
            ["tier"], registry=r,
        )  # fmt: skip
        self.ttft = Histogram(
            "tandem_time_to_first_token_seconds",
            "Time to first token",
            buckets=_LATENCY_BUCKETS_S,
            registry=r,
        )
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
        for outcome in OUTCOMES:
            self.requests.labels(outcome)
        for tier in TIERS:
            self.cached_tokens.labels(tier)
            self.predicted_cached_tokens.labels(tier)

    def render(self) -> bytes:
        return generate_latest(self.registry)
