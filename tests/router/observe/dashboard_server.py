"""A stand-in for the router's ``/metrics`` under the dashboard's routes, and the Prometheus text
it serves: hand-written, so the page's numbers can be checked against values known in advance."""

from __future__ import annotations

import socket
import threading
import time

import uvicorn
from fastapi import FastAPI
from fastapi.responses import PlainTextResponse

from router.observe.dashboard import dashboard_router

# What the router prints, trimmed: every family the dashboard reads, with HELP/TYPE lines,
# _created samples, and a label value that needs escaping.
SAMPLE = """\
# HELP tandem_requests_total Requests by outcome
# TYPE tandem_requests_total counter
tandem_requests_total{{outcome="ok"}} {ok}.0
tandem_requests_total{{outcome="invalid"}} 1.0
tandem_requests_total{{outcome="rejected"}} 2.0
tandem_requests_total{{outcome="failed"}} 0.0
tandem_requests_total{{outcome="cancelled"}} 0.0
tandem_requests_created{{outcome="ok"}} 1.7e+09
# TYPE tandem_rejections_total counter
tandem_rejections_total{{reason="slo_ttft"}} 1.0
tandem_rejections_total{{reason="no \\"capacity\\" left"}} 1.0
# TYPE tandem_prompt_tokens_total counter
tandem_prompt_tokens_total {prompt}.0
# TYPE tandem_cached_tokens_total counter
tandem_cached_tokens_total{{tier="local"}} {local}.0
tandem_cached_tokens_total{{tier="store"}} {store}.0
# TYPE tandem_predicted_cached_tokens_total counter
tandem_predicted_cached_tokens_total{{tier="local"}} {local}.0
tandem_predicted_cached_tokens_total{{tier="store"}} 0.0
# TYPE tandem_instance_prompt_tokens_total counter
tandem_instance_prompt_tokens_total{{instance="prefill-0"}} {prompt0}.0
tandem_instance_prompt_tokens_total{{instance="prefill-1"}} {prompt1}.0
# TYPE tandem_instance_cached_tokens_total counter
tandem_instance_cached_tokens_total{{instance="prefill-0",tier="local"}} {local}.0
tandem_instance_cached_tokens_total{{instance="prefill-0",tier="store"}} 0.0
tandem_instance_cached_tokens_total{{instance="prefill-1",tier="local"}} 0.0
tandem_instance_cached_tokens_total{{instance="prefill-1",tier="store"}} {store}.0
# TYPE tandem_kv_hit_rate gauge
tandem_kv_hit_rate {hit}
# TYPE tandem_kv_hit_rate_by_tier gauge
tandem_kv_hit_rate_by_tier{{tier="local"}} {hit_local}
tandem_kv_hit_rate_by_tier{{tier="store"}} {hit_store}
# TYPE tandem_instance_kv_hit_rate gauge
tandem_instance_kv_hit_rate{{instance="prefill-0"}} {hit0}
tandem_instance_kv_hit_rate{{instance="prefill-1"}} {hit1}
# TYPE tandem_time_to_first_token_seconds histogram
tandem_time_to_first_token_seconds_bucket{{le="0.1"}} 0.0
tandem_time_to_first_token_seconds_bucket{{le="0.5"}} 4.0
tandem_time_to_first_token_seconds_bucket{{le="1.0"}} 8.0
tandem_time_to_first_token_seconds_bucket{{le="+Inf"}} 10.0
tandem_time_to_first_token_seconds_count 10.0
tandem_time_to_first_token_seconds_sum 6.5
# TYPE tandem_time_per_output_token_seconds histogram
tandem_time_per_output_token_seconds_bucket{{le="0.01"}} 0.0
tandem_time_per_output_token_seconds_bucket{{le="0.1"}} 10.0
tandem_time_per_output_token_seconds_bucket{{le="+Inf"}} 10.0
tandem_time_per_output_token_seconds_count 10.0
tandem_time_per_output_token_seconds_sum 0.5
# TYPE tandem_requests_in_flight gauge
tandem_requests_in_flight 3.0
# TYPE tandem_slo_seconds gauge
tandem_slo_seconds{{kind="ttft"}} 2.0
tandem_slo_seconds{{kind="tbt"}} 0.05
# TYPE tandem_workers gauge
tandem_workers{{role="prefill"}} 2.0
tandem_workers{{role="decode"}} 1.0
tandem_workers{{role="colocated"}} 0.0
# TYPE tandem_worker_running gauge
tandem_worker_running{{instance="prefill-0",role="prefill"}} 1.0
tandem_worker_running{{instance="decode-0",role="decode"}} 3.0
# TYPE tandem_worker_waiting gauge
tandem_worker_waiting{{instance="prefill-0",role="prefill"}} 2.0
tandem_worker_waiting{{instance="decode-0",role="decode"}} 0.0
# TYPE tandem_worker_kv_pages_free gauge
tandem_worker_kv_pages_free{{instance="prefill-0",role="prefill"}} 400.0
tandem_worker_kv_pages_free{{instance="decode-0",role="decode"}} 500.0
# TYPE tandem_worker_kv_pages_total gauge
tandem_worker_kv_pages_total{{instance="prefill-0",role="prefill"}} 512.0
tandem_worker_kv_pages_total{{instance="decode-0",role="decode"}} 512.0
# TYPE tandem_store_bytes_used gauge
tandem_store_bytes_used{{node="store-0"}} 2.62144e+07
# TYPE tandem_store_capacity_bytes gauge
tandem_store_capacity_bytes{{node="store-0"}} 1.073741824e+09
# TYPE tandem_store_chunks gauge
tandem_store_chunks{{node="store-0"}} 42.0
# TYPE tandem_store_evictions_total counter
tandem_store_evictions_total{{node="store-0"}} 0.0
# TYPE tandem_store_hits_total counter
tandem_store_hits_total{{node="store-0"}} 8.0
# TYPE tandem_store_misses_total counter
tandem_store_misses_total{{node="store-0"}} 2.0
# TYPE tandem_transfer_bytes_total counter
tandem_transfer_bytes_total{{instance="prefill-0",kind="kv_send"}} 1.048576e+06
tandem_transfer_bytes_total{{instance="prefill-0",kind="store_put"}} 2.097152e+06
# TYPE tandem_transfer_seconds_total counter
tandem_transfer_seconds_total{{instance="prefill-0",kind="kv_send"}} 0.5
tandem_transfer_seconds_total{{instance="prefill-0",kind="store_put"}} 0.25
"""


def sample(prompt0: int, prompt1: int, local: int, store: int, ok: int = 5) -> str:
    """The sample text for these counters, with the gauges the router would derive from them."""
    prompt = prompt0 + prompt1
    rate = lambda part, whole: repr(part / whole) if whole else "0.0"  # noqa: E731 (repr: as Python prints)
    return SAMPLE.format(
        ok=ok, prompt=prompt, prompt0=prompt0, prompt1=prompt1, local=local, store=store,
        hit=rate(local + store, prompt), hit_local=rate(local, prompt), hit_store=rate(store, prompt),
        hit0=rate(local, prompt0), hit1=rate(store, prompt1),
    )  # fmt: skip


EMPTY = sample(0, 0, 0, 0, ok=0)
FIRST = sample(700, 300, 300, 100)  # hit rate 0.4
SECOND = sample(1000, 500, 500, 200)  # +500 prompt, +200 local, +100 store in between: 0.6 over it


class Served:
    """An ASGI app on uvicorn in a thread, on a free 127.0.0.1 port (no lifespan: nothing to start)."""

    def __init__(self, app: FastAPI) -> None:
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
        self._thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self._sock]}, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            assert time.monotonic() < deadline and self._thread.is_alive(), "server did not start"
            time.sleep(0.01)

    def stop(self) -> None:
        self.server.should_exit = True
        self._thread.join(timeout=10)
        self._sock.close()


class FakeMetricsServer(Served):
    """The dashboard routes plus a ``/metrics`` that serves ``self.text`` (or ``self.status``)."""

    def __init__(self) -> None:
        self.text = EMPTY
        self.status = 200
        app = FastAPI()
        app.include_router(dashboard_router())

        @app.get("/metrics")
        async def metrics() -> PlainTextResponse:
            return PlainTextResponse(self.text, status_code=self.status)

        super().__init__(app)
