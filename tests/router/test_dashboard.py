"""The dashboard (``router/dashboard.py`` + ``router/static/``) against a stand-in ``/metrics``.

The page and its assets are checked over HTTP; its JavaScript runs in headless Chromium
(``tests/browser.py``) against hand-written Prometheus text that the test changes under it: the
parser must agree with ``prometheus_client``'s, the rendered values with the text, and the page
must move from "no data yet" to live to "stale" without reloading.
"""

from __future__ import annotations

import json
import math
import re
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import uvicorn
from fastapi import FastAPI
from fastapi.responses import PlainTextResponse
from prometheus_client.parser import text_string_to_metric_families

from router.dashboard import ASSETS, STATIC_DIR, dashboard_router
from router.history import MetricsHistory
from router.metrics import PrefillReport, RouterMetrics
from tests.browser import Browser, Page

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


@pytest.fixture(scope="module")
def server() -> Iterator[FakeMetricsServer]:
    s = FakeMetricsServer()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with Browser.launch() as b:
        yield b


@pytest.fixture
def page(browser: Browser, server: FakeMetricsServer) -> Iterator[Page]:
    server.text, server.status = EMPTY, 200
    page = browser.new_page()
    page.navigate(f"{server.url}/dashboard?interval_ms=150")
    page.wait_for("window.tandemDashboard && window.tandemDashboard.polls > 0")
    yield page
    page.close()


def js(value: object) -> str:
    """A JavaScript literal for ``value``."""
    return json.dumps(value)


def attr(page: Page, selector: str, name: str) -> str | None:
    return page.evaluate(f"document.querySelector({js(selector)})?.getAttribute({js(name)}) ?? null")


def test_page_and_assets_are_served(server: FakeMetricsServer) -> None:
    resp = requests.get(f"{server.url}/dashboard", timeout=5)
    assert resp.status_code == 200
    assert resp.headers["content-type"] == "text/html; charset=utf-8"
    assert 'id="hit-rate-overall"' in resp.text
    for name, media_type in ASSETS.items():
        asset = requests.get(f"{server.url}/dashboard/{name}", timeout=5)
        assert asset.status_code == 200, name
        assert asset.headers["content-type"] == media_type
        assert asset.content == (STATIC_DIR / name).read_bytes()
        assert f'"dashboard/{name}"' in resp.text, f"the page does not load {name}"
    assert requests.get(f"{server.url}/dashboard/missing.js", timeout=5).status_code == 404
    assert requests.get(f"{server.url}/dashboard/..%2Fdashboard.py", timeout=5).status_code == 404


def test_static_dir_holds_only_our_files() -> None:
    """Everything in router/static is served, and nothing there loads code from elsewhere."""
    assert {p.name for p in STATIC_DIR.iterdir()} == {"index.html", *ASSETS}
    for path in STATIC_DIR.iterdir():
        urls = set(re.findall(r"(?:https?:)?//[\w.-]+\.\w+[^\s\"')]*", path.read_text()))
        assert urls <= {"http://www.w3.org/2000/svg"}, f"{path.name} refers to {urls}"


def test_router_app_serves_the_dashboard(default_model: Path) -> None:
    from router.app import create_app
    from router.config import RouterConfig

    served = Served(create_app(RouterConfig(model_dir=default_model, redis_url="redis://127.0.0.1:1")))
    try:
        page = requests.get(f"{served.url}/dashboard", timeout=5)
        assert page.status_code == 200 and 'id="hit-rate-overall"' in page.text
        assert requests.get(f"{served.url}/dashboard/app.js", timeout=5).status_code == 200
        missing = requests.get(f"{served.url}/dashboard/nope.js", timeout=5)
        assert missing.status_code == 404 and "nope.js" in missing.json()["error"]["message"]
    finally:
        served.stop()


def test_js_parser_agrees_with_prometheus_client(page: Page) -> None:
    parsed = page.evaluate(f"TandemProm.parse({js(FIRST)}).samples")
    expected = [
        (s.name, s.labels, s.value)
        for family in text_string_to_metric_families(FIRST)
        for s in family.samples
    ]  # fmt: skip
    assert [(s["name"], s["labels"], s["value"]) for s in parsed] == expected
    assert {"name": "tandem_rejections_total", "labels": {"reason": 'no "capacity" left'}, "value": 1,
            "raw": "1.0"} in parsed  # fmt: skip


def test_js_quantiles_follow_histogram_quantile(page: Page) -> None:
    def q(base: str, quantile: float) -> float:
        return page.evaluate(f"TandemProm.quantile(TandemProm.parse({js(FIRST)}), {js(base)}, {quantile})")

    ttft = "tandem_time_to_first_token_seconds"
    # 10 observations: 0 ≤ 0.1 s, 4 ≤ 0.5 s, 8 ≤ 1 s. The 5th falls 1/4 into (0.5, 1].
    assert q(ttft, 0.5) == pytest.approx(0.625)
    assert q(ttft, 0.2) == pytest.approx(0.3)  # 2nd of 4 in (0.1, 0.5]
    assert q(ttft, 0.99) == 1.0  # in the +Inf bucket: the highest finite bound
    assert q("tandem_time_per_output_token_seconds", 0.9) == pytest.approx(0.091)
    empty = js('h_bucket{le="1.0"} 0.0\nh_bucket{le="+Inf"} 0.0\nh_count 0.0\n')
    assert math.isnan(page.evaluate(f"TandemProm.quantile(TandemProm.parse({empty}), 'h', 0.5)"))


def test_no_data_then_live_then_stale_without_reloading(page: Page, server: FakeMetricsServer) -> None:
    assert page.wait_for("document.body.dataset.state === 'no-data'")
    assert attr(page, "#hit-rate-overall", "data-value") is None
    assert page.evaluate("document.getElementById('hit-rate-overall').textContent") == "—"
    assert "No data yet" in page.evaluate("document.getElementById('banner').textContent")
    page.evaluate("window.__sameDocument = true")

    server.text = FIRST
    page.wait_for("document.getElementById('hit-rate-overall').dataset.value === '0.4'")
    assert page.evaluate("document.body.dataset.state") == "live"
    assert page.evaluate("document.getElementById('hit-rate-overall').textContent") == "40.0%"
    server.text = SECOND
    page.wait_for("document.getElementById('hit-rate-overall').dataset.value !== '0.4'")
    hit = next(line.split()[1] for line in SECOND.splitlines() if line.startswith("tandem_kv_hit_rate "))
    assert attr(page, "#hit-rate-overall", "data-value") == hit
    assert attr(page, "#hit-rate-local", "data-value") == repr(500 / 1500)
    assert attr(page, "#hit-rate-store", "data-value") == repr(200 / 1500)
    assert attr(page, '[data-instance="prefill-0"]', "data-value") == repr(500 / 1000)
    assert attr(page, '[data-instance="prefill-1"]', "data-value") == repr(200 / 500)
    rates = page.evaluate("tandemDashboard.history.map(p => p.rate.overall).filter(r => r !== null)")
    assert rates[-1] == pytest.approx(0.6)  # the interval between the two scrapes, from the deltas
    assert page.evaluate("document.querySelectorAll('#chart-hit path.series').length") >= 1
    for selector in ('[data-node="store-0"]', '[data-worker="decode-0"]', '[data-outcome="ok"]',
                     '[data-kind="store_put"]', '[data-reason="slo_ttft"]'):  # fmt: skip
        assert page.evaluate(f"!!document.querySelector({js(selector)})"), selector
    assert page.evaluate("document.querySelectorAll('#chart-latency line.slo').length") == 3

    server.status = 503
    page.wait_for("document.body.dataset.state === 'stale'")
    assert "stale since" in page.evaluate("document.getElementById('status').textContent")
    assert "HTTP 503" in page.evaluate("document.getElementById('banner').textContent")
    assert attr(page, "#hit-rate-overall", "data-value") == hit  # the last values stay
    server.status = 200
    page.wait_for("document.body.dataset.state === 'live'")
    assert page.evaluate("window.__sameDocument") is True
    assert page.errors() == []


def test_a_new_page_starts_from_the_router_s_history(browser: Browser) -> None:
    metrics = RouterMetrics()
    history = MetricsHistory(metrics, lambda: [], interval_s=1.0, window_s=60)
    now = time.time()
    history.sample(now - 3)  # nothing yet
    metrics.prefilled(PrefillReport("p0", 100, 25, 0, 0, 0))
    history.sample(now - 2)
    metrics.prefilled(PrefillReport("p0", 100, 50, 25, 0, 0))
    history.sample(now - 1)
    app = FastAPI()
    app.include_router(dashboard_router())
    app.state.history = history

    @app.get("/metrics")
    async def scrape() -> PlainTextResponse:
        return PlainTextResponse(metrics.render().decode())

    served = Served(app)
    try:
        body = requests.get(f"{served.url}/dashboard/history", timeout=5).json()
        assert [s["prompt"] for s in body["samples"]] == [0, 100, 200]
        assert body["samples"][-1]["cached"] == {"local": 75, "store": 25}
        page = browser.new_page()
        try:
            page.navigate(f"{served.url}/dashboard?interval_ms=200")
            page.wait_for("window.tandemDashboard && window.tandemDashboard.polls > 0")
            assert page.evaluate("tandemDashboard.seeded") == 3
            rates = page.evaluate("tandemDashboard.history.slice(0, 3).map(p => p.rate.overall)")
            assert rates == [None, 0.25, 0.75]  # per interval, from the deltas of the router's totals
            cumulative = page.evaluate("tandemDashboard.history[2].cumulative")
            assert cumulative == pytest.approx(0.5)
            assert page.errors() == []
        finally:
            page.close()
    finally:
        served.stop()


def test_history_keeps_the_window() -> None:
    metrics = RouterMetrics()
    history = MetricsHistory(metrics, lambda: [], interval_s=1.0, window_s=5)
    for t in range(20):
        history.sample(float(t))
    samples = history.to_json()["samples"]
    assert [s["t"] for s in samples] == [14.0, 15.0, 16.0, 17.0, 18.0, 19.0]
    with pytest.raises(ValueError):
        MetricsHistory(metrics, lambda: [], interval_s=2, window_s=1)
