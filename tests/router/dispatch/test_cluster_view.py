"""The router's cluster view rides out a Redis outage on its last view, for a bounded time, and
then refuses with an error that names no internal address."""

from __future__ import annotations

import asyncio

import pytest

from kvstore.client import StoreClient
from kvstore.embedded_redis import EmbeddedRedis
from router.dispatch import cluster as cluster_module
from router.dispatch.cluster import ClusterView
from router.errors import ApiError
from worker.registry import WorkerRegistry
from worker.types import WorkerInfo, WorkerLoad


def test_the_last_view_serves_through_a_registry_outage_then_a_clean_503(monkeypatch):
    redis = EmbeddedRedis().start()
    registry, store = WorkerRegistry(redis.url), StoreClient(redis.url)
    clock = {"now": 100.0}
    monkeypatch.setattr(cluster_module.time, "monotonic", lambda: clock["now"])
    try:
        info = WorkerInfo(
            worker_id="c0", role="colocated", address="tcp://127.0.0.1:1", model="m", fingerprint="00",
            page_size=16, chunk_tokens=64, max_model_len=64,
        )  # fmt: skip
        registry.publish(info, WorkerLoad())
        view = ClusterView(registry, store, refresh_interval_s=0.1, stale_after_s=3.0, registry_grace_s=30.0)
        asyncio.run(view.refresh())
        assert [w.info.worker_id for w in view.current().workers] == ["c0"]
        redis.stop()
        clock["now"] += 10.0  # past stale_after_s, within the grace: the registry is down, not slow
        asyncio.run(view.refresh())
        assert view.fresh and [w.info.worker_id for w in view.current().workers] == ["c0"]
        clock["now"] += 21.0
        with pytest.raises(ApiError) as refused:
            view.current()
        error = refused.value
        assert (error.status, error.code) == (503, "cluster_unavailable")
        assert "has not answered for 31s" in error.message and str(redis.port) not in error.message
    finally:
        registry.close()
        store.close()
        redis.stop()


def test_after_a_redis_restart_the_workers_not_yet_registered_again_stay_a_while(monkeypatch):
    redis = EmbeddedRedis().start()
    clock = {"now": 100.0}
    monkeypatch.setattr(cluster_module.time, "monotonic", lambda: clock["now"])
    registry, store = WorkerRegistry(redis.url), StoreClient(redis.url)
    try:

        def info(worker_id: str, role: str) -> WorkerInfo:
            return WorkerInfo(worker_id=worker_id, role=role, address=f"tcp://127.0.0.1:{len(worker_id)}",
                              model="m", fingerprint="00", page_size=16, chunk_tokens=64, max_model_len=64)  # fmt: skip

        registry.publish(info("p0", "prefill"), WorkerLoad())
        registry.publish(info("d0", "decode"), WorkerLoad())
        view = ClusterView(registry, store, refresh_interval_s=0.1, stale_after_s=3.0)
        asyncio.run(view.refresh())
        redis.stop()
        asyncio.run(view.refresh())  # the outage
        redis.start()  # back on the same port, empty
        registry.publish(info("p0", "prefill"), WorkerLoad())  # the first to heartbeat again
        clock["now"] += 1.0
        asyncio.run(view.refresh())
        assert sorted(w.info.worker_id for w in view.current().workers) == ["d0", "p0"]  # d0 carried
        clock["now"] += 3.0  # d0 never came back within a lease: it is gone
        asyncio.run(view.refresh())
        assert [w.info.worker_id for w in view.current().workers] == ["p0"]
    finally:
        registry.close()
        store.close()
        redis.stop()
