"""What the router's metrics count of each request: refusals, prefills (predicted vs realised
hits), latencies per attempt, outcomes and the requests in flight. Each attempt is counted once,
whichever path ends it."""

from __future__ import annotations

import time

from router.conductor import PendingDecodes, PendingPrefills
from router.dispatch.generation import Generation
from router.errors import ApiError
from router.observe.metrics import PrefillReport, RouterMetrics

REJECTED_CODES = {
    "no_workers",
    "no_decode",
    "cluster_unavailable",
    "ttft_slo",
    "tbt_slo",
    "too_many_requests",
}


class Accounting:
    def __init__(self, metrics: RouterMetrics, pending: PendingPrefills, decoding: PendingDecodes) -> None:
        self.metrics = metrics
        self._pending = pending
        self._decoding = decoding
        self.num_in_flight = 0  # admitted requests not yet answered in full

    def refused(self, error: ApiError) -> None:
        """A request refused before it was admitted."""
        if error.code in REJECTED_CODES:
            self.metrics.requests.labels("rejected").inc()
            self.metrics.rejections.labels(error.code).inc()
        else:
            self.metrics.requests.labels("invalid" if error.status < 500 else "failed").inc()

    def count_prefill(self, gen: Generation) -> None:
        """An attempt is over: its decode KV is no longer committed, and its prefill is counted
        (once), if its prefill worker reported one."""
        self._pending.done(gen.request_id)
        self._decoding.done(gen.request_id)
        if gen.first_token_at is None or gen.prefill_counted:  # never reported: nothing was reused
            return
        gen.prefill_counted = True
        predicted = gen.route.prefill
        self.metrics.prefilled(
            PrefillReport(
                gen.prefill_id, len(gen.token_ids), gen.num_cached_local, gen.num_cached_store,
                predicted.cached_local_tokens, predicted.cached_store_tokens,
            )
        )  # fmt: skip

    def started(self) -> None:
        self.num_in_flight += 1
        self.metrics.request_started()

    def ended(self, gens: list[Generation], outcome: str) -> None:
        """The request is answered (``outcome``): its choices' attempts, then the request itself."""
        for gen in gens:
            self.finish(gen, outcome)
        self.num_in_flight -= 1
        self.metrics.request_ended()
        self.metrics.requests.labels(outcome).inc()

    def finish(self, gen: Generation, outcome: str) -> None:
        """An attempt is over: its prefill, tokens and latencies go to the metrics (once)."""
        if gen.finished:
            return
        gen.finished = True
        self.count_prefill(gen)
        m = self.metrics
        m.generation_tokens.inc(gen.num_output_tokens)
        if gen.first_token_at is None:
            return
        ttft = gen.first_token_at - gen.started_at
        m.ttft.observe(ttft)
        for before, after in zip(gen.token_times, gen.token_times[1:]):
            m.itl.observe(after - before)
        if outcome == "ok":
            e2e = time.monotonic() - gen.started_at
            m.e2e.observe(e2e)
            if gen.num_output_tokens > 1:
                m.tpot.observe((e2e - ttft) / (gen.num_output_tokens - 1))
