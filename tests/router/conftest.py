"""Fixtures: a real Redis, stand-in workers on real ZeroMQ sockets, and real routers on uvicorn."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import replace

import pytest
import redis
import requests
import uvicorn

from kvstore.embedded_redis import EmbeddedRedis
from router.app import create_app
from router.config import RouterConfig
from tests.router.fake_worker import FakeWorker


@pytest.fixture(scope="module")
def redis_server() -> Iterator[EmbeddedRedis]:
    server = EmbeddedRedis().start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: EmbeddedRedis) -> Iterator[str]:
    redis.Redis.from_url(redis_server.url).flushall()  # no workers left over from an earlier test
    yield redis_server.url


class RouterServer:
    """A router app on uvicorn in a thread, on a free 127.0.0.1 port."""

    def __init__(self, config: RouterConfig) -> None:
        self.app = create_app(config)
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(self.app, log_level="warning", lifespan="on"))
        self._thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self._sock]}, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("router did not start")
            time.sleep(0.01)

    def wait_ready(self, **counts: int) -> dict:
        """Wait until /health lists exactly these workers per role (unnamed roles: 0)."""
        want = {"prefill": 0, "decode": 0, "colocated": 0, **counts}
        deadline = time.monotonic() + 5
        while True:
            body = requests.get(self.url + "/health", timeout=5).json()
            if body["workers"] == want or time.monotonic() > deadline:
                assert body["workers"] == want
                return body
            time.sleep(0.02)

    def metric(self, name: str) -> float:
        """The value of one sample (``name`` with labels, e.g. 'tandem_requests_total{outcome="ok"}')."""
        for line in requests.get(self.url + "/metrics", timeout=5).text.splitlines():
            if line.startswith(name + " "):
                return float(line.split()[-1])
        raise KeyError(name)

    def stop(self) -> None:
        self.server.should_exit = True
        self._thread.join(timeout=10)
        self._sock.close()


@pytest.fixture
def start_router(redis_url: str, default_model):
    started: list[RouterServer] = []

    def start(**overrides) -> RouterServer:
        config = RouterConfig(model_dir=default_model, redis_url=redis_url, refresh_interval_s=0.05)
        server = RouterServer(replace(config, **overrides))
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def start_worker(redis_url: str, default_model):
    """Fake workers that report serving the router's model (``model=`` to say another)."""
    started: list[FakeWorker] = []

    def start(worker_id: str, role: str, **kwargs) -> FakeWorker:
        kwargs.setdefault("model", default_model.resolve().name)
        worker = FakeWorker(redis_url, worker_id, role, **kwargs)
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.stop()
