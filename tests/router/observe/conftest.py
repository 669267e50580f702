"""Fixtures for the dashboard's tests: a stand-in ``/metrics`` server, headless Chromium
(``tests/browser``) and a dashboard page open on the server."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.browser import Browser, Page
from tests.router.observe.dashboard_server import EMPTY, FakeMetricsServer


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
