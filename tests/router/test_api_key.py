"""With an API key, the router answers only requests that carry it (OpenAI's 401 otherwise), and
the open paths (health, metrics, dashboard) stay open for probes and scrapers."""

from __future__ import annotations

import openai
import pytest
import redis
import requests

from router.config import RouterConfig
from tests.router.conftest import RouterServer
from tests.router.fake_worker import FakeWorker

KEY = "sk-tandem-test-key"


@pytest.fixture(scope="module")
def router(redis_server, default_model):
    redis.Redis.from_url(redis_server.url).flushall()
    worker = FakeWorker(redis_server.url, "c0", "colocated", model=default_model.resolve().name)
    worker.behaviour.reply = [28, 29, 30]
    config = RouterConfig(
        model_dir=default_model, redis_url=redis_server.url, refresh_interval_s=0.05, api_key=KEY
    )
    server = RouterServer(config)
    server.wait_ready(colocated=1)
    yield server
    server.stop()
    worker.stop()


def test_requests_without_the_key_get_openais_401(router):
    body = {"model": "m", "prompt": "hi"}
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}):
        r = requests.post(f"{router.url}/v1/completions", json=body, headers=headers, timeout=10)
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        error = r.json()["error"]
        assert error["code"] == "invalid_api_key" and error["type"] == "invalid_request_error"
        assert "Authorization: Bearer" in error["message"]
    assert requests.get(f"{router.url}/v1/models", timeout=10).status_code == 401
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{router.url}/v1", api_key="wrong", max_retries=0).models.list()


def test_the_key_opens_the_api_and_probes_need_none(router):
    client = openai.OpenAI(base_url=f"{router.url}/v1", api_key=KEY, max_retries=0)
    model = client.models.list().data[0].id
    assert client.completions.create(model=model, prompt="hi", max_tokens=3).choices[0].text
    for path in ("/health", "/metrics", "/dashboard"):
        assert requests.get(router.url + path, timeout=10).status_code == 200, path
    assert requests.get(router.url + "/healthz", timeout=10).status_code == 401  # not an open path


def test_an_empty_or_padded_key_is_refused_at_start(default_model):
    for key in ("", " sk "):
        with pytest.raises(ValueError, match="api_key must be non-empty"):
            RouterConfig(model_dir=default_model, redis_url="redis://127.0.0.1:1", api_key=key)
