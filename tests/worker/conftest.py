"""Fixtures: a real Redis, stopped by PID."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from kvstore.embedded_redis import EmbeddedRedis


@pytest.fixture
def redis_server() -> Iterator[EmbeddedRedis]:
    server = EmbeddedRedis().start()
    yield server
    server.stop()
