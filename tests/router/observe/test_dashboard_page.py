"""The dashboard's JavaScript in headless Chromium (``tests/browser``) against hand-written
Prometheus text that the test changes under it: the parser must agree with ``prometheus_client``'s,
the rendered values with the text, and the page must move from "no data yet" to live to "stale"
without reloading.
"""

from __future__ import annotations

import json
import math

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.browser import Page
from tests.router.observe.dashboard_server import FIRST, SECOND, FakeMetricsServer


def js(value: object) -> str:
    """A JavaScript literal for ``value``."""
    return json.dumps(value)


def attr(page: Page, selector: str, name: str) -> str | None:
    return page.evaluate(f"document.querySelector({js(selector)})?.getAttribute({js(name)}) ?? null")


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
