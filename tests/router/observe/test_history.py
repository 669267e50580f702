"""The router's metrics history (``router/observe/history.py``): the window it keeps, and a new
dashboard page that starts its charts from it."""

from __future__ import annotations

import time

import pytest
import requests
from fastapi import FastAPI
from fastapi.responses import PlainTextResponse

from router.observe.dashboard import dashboard_router
from router.observe.history import MetricsHistory
from router.observe.metrics import PrefillReport, RouterMetrics
from tests.browser import Browser
from tests.router.observe.dashboard_server import Served


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
