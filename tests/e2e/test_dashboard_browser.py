"""The dashboard in headless Chromium against a real cluster (``LocalCluster``: Redis, store nodes,
two prefill workers, a decode worker, the router): it starts in its "no data yet" state, follows
live traffic without reloading, and ends up showing exactly the hit rates ``/metrics`` reports.
The screenshot is kept as a test artifact (``$TANDEM_TEST_ARTIFACTS``, else ``test-artifacts/``).
"""

from __future__ import annotations

import json
import time

import openai
import pytest
import requests

from cluster.launcher import ClusterConfig, LocalCluster
from tests.browser import Browser, Page, artifacts_dir, require_chromium

pytestmark = pytest.mark.slow

# ~190 tokens with the chat template: two full 64-token chunks to share.
SYSTEM = "You are a meticulous assistant for a lighthouse keeper. Answer briefly and precisely. " * 8
QUESTIONS = ("Name a color.", "Name a fruit.", "Name a tree.", "Name a bird.", "Name a fish.")
OVERALL = "document.getElementById('hit-rate-overall')"


def scrape(url: str) -> dict[str, str]:
    """``/metrics`` as {'name{labels}': value exactly as printed}."""
    text = requests.get(f"{url}/metrics", timeout=10).text
    return dict(line.rsplit(" ", 1) for line in text.splitlines() if line and not line.startswith("#"))


def shown(page: Page, selector: str) -> str | None:
    return page.evaluate(f"document.querySelector({json.dumps(selector)})?.dataset.value ?? null")


def rendered_hit_rates(page: Page, metrics: dict[str, str]) -> dict[str, tuple[str | None, str]]:
    """For every hit-rate gauge in ``metrics``: (what the page shows as data-value, what /metrics says)."""
    pairs = {"tandem_kv_hit_rate": (shown(page, "#hit-rate-overall"), metrics["tandem_kv_hit_rate"])}
    for tier in ("local", "store"):
        key = f'tandem_kv_hit_rate_by_tier{{tier="{tier}"}}'
        pairs[key] = (shown(page, f"#hit-rate-{tier}"), metrics[key])
    for key, raw in metrics.items():
        if key.startswith("tandem_instance_kv_hit_rate{"):
            instance = key.split('"')[1]
            pairs[key] = (shown(page, f'[data-instance="{instance}"]'), raw)
    return pairs


def test_dashboard_follows_live_traffic_and_agrees_with_metrics(default_model):
    chromium = require_chromium()  # skip (or fail under CI) before starting a cluster
    config = ClusterConfig(model_dir=default_model, port=0, num_pages=512, num_prefill=2,
                           num_decode=1, policy="round_robin")  # fmt: skip
    shot = artifacts_dir() / "dashboard.png"
    with LocalCluster(config) as cluster, Browser.launch(chromium) as browser:
        page = browser.new_page(width=1400, height=1000)
        try:
            page.navigate(f"{cluster.url}/dashboard")
            assert_starts_with_no_data(page)
            page.evaluate("window.__sameDocument = true")
            cached = follow_traffic(page, cluster.url)
            assert sum(cached) > 0, f"no cache hits: {cached}"
            assert page.evaluate("document.body.dataset.state") == "live"
            assert_shows_what_metrics_says(page, cluster.url)
            assert_charts_drawn(page)
            assert page.evaluate("window.__sameDocument") is True, "the page reloaded"
            assert page.errors() == []
        finally:
            time.sleep(0.2)  # let the last redraw land
            page.screenshot(shot)
            print(f"dashboard screenshot: {shot}")


def assert_starts_with_no_data(page: Page) -> None:
    page.wait_for("document.body.dataset.state === 'no-data'", timeout_s=15)
    assert shown(page, "#hit-rate-overall") is None
    assert page.evaluate(f"{OVERALL}.textContent") == "—"


def follow_traffic(page: Page, url: str) -> list[int]:
    """Ask every question under the shared system prompt, waiting after each for the page to show
    a hit rate; returns the cached tokens each response reported."""
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=120)
    model = client.models.list().data[0].id
    cached = []
    for question in QUESTIONS:
        messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}]
        resp = client.chat.completions.create(model=model, messages=messages, max_tokens=4)
        cached.append(resp.usage.prompt_tokens_details.cached_tokens)
        # the page follows the traffic as it happens, without a reload
        page.wait_for(f"{OVERALL}.dataset.value !== undefined", timeout_s=10)
    return cached


def assert_shows_what_metrics_says(page: Page, url: str) -> None:
    """Traffic is over: once the page has polled after the last request, every hit rate it shows
    equals the gauge in /metrics, character for character, and so do the request counts."""
    metrics = scrape(url)
    polls = page.evaluate("tandemDashboard.polls")
    page.wait_for(f"tandemDashboard.polls >= {polls + 2}", timeout_s=10)
    pairs = rendered_hit_rates(page, metrics)
    assert scrape(url)["tandem_kv_hit_rate"] == metrics["tandem_kv_hit_rate"]  # settled
    assert {key: page_value for key, (page_value, _) in pairs.items()} == {
        key: raw for key, (_, raw) in pairs.items()
    }
    assert float(metrics["tandem_kv_hit_rate"]) > 0
    assert len([k for k in pairs if k.startswith("tandem_instance_")]) == 2  # both prefill workers
    for outcome in ("ok", "rejected", "failed"):
        count = float(metrics[f'tandem_requests_total{{outcome="{outcome}"}}'])
        selector = json.dumps(f'[data-outcome="{outcome}"]')
        assert page.evaluate(f"document.querySelector({selector}).textContent") == f"{count:,.0f}"
    shown_pct = page.evaluate(f"{OVERALL}.textContent")
    assert shown_pct == f"{float(metrics['tandem_kv_hit_rate']) * 100:.1f}%"


def assert_charts_drawn(page: Page) -> None:
    """The charts drew what they should (hit rate over time, instances, store, workers, latency)."""
    counts = page.evaluate("""({
        series: document.querySelectorAll('#chart-hit path.series, #chart-hit circle').length,
        instances: document.querySelectorAll('#chart-instances [data-instance]').length,
        nodes: document.querySelectorAll('#chart-store [data-node]').length,
        workers: document.querySelectorAll('#chart-workers [data-worker]').length,
        slo: document.querySelectorAll('#chart-latency line.slo').length,
    })""")
    assert counts["series"] > 0 and counts["slo"] == 3, counts
    # a store node per worker
    assert (counts["instances"], counts["nodes"], counts["workers"]) == (2, 3, 3), counts
