"""Whole-cluster fixtures shared by the end-to-end tests."""

from __future__ import annotations

import pytest

from cluster.launcher import ClusterConfig, LocalCluster
from kvstore.embedded_redis import EmbeddedRedis
from tests.e2e.router_stub import Router


@pytest.fixture(scope="module")
def redis_url():
    """An embedded Redis of each test module's own, for the modules that start workers themselves."""
    redis = EmbeddedRedis().start()
    yield redis.url
    redis.stop()


@pytest.fixture(scope="module")
def router():
    """The test acting as the router (``tests/e2e/router_stub.py``), closed after the module."""
    r = Router()
    yield r
    r.close()


@pytest.fixture(scope="session")
def one_by_one(default_model):
    """``tandem up``'s default shape (1 prefill + 1 decode worker, a store node each, Redis, the
    router), started once for the tests that only talk to it; stopped by PID at the end."""
    config = ClusterConfig(model_dir=default_model, port=0, num_pages=512, num_prefill=1, num_decode=1)
    cluster = LocalCluster(config).start()
    yield cluster
    cluster.stop()
