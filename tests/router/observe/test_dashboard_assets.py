"""The dashboard's page and assets over HTTP (``router/observe/dashboard.py`` + ``static/``)."""

from __future__ import annotations

import re
from pathlib import Path

import requests

from router.observe.dashboard import ASSETS, STATIC_DIR
from tests.router.observe.dashboard_server import FakeMetricsServer, Served


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
    """Everything in router/observe/static is served, and nothing there loads code from elsewhere."""
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
