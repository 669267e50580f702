"""A draining worker (shutting down gracefully) in the router's view: live, so the requests it
still serves are not failed as lost, but given no new ones (real Redis: the flag round-trips the
registry)."""

from __future__ import annotations

import asyncio

import pytest

from kvstore.client import StoreClient
from kvstore.embedded_redis import EmbeddedRedis
from router.dispatch.cluster import ClusterView
from router.errors import ApiError
from worker.registry import WorkerRegistry
from worker.types import WorkerInfo, WorkerLoad


def info(worker_id: str, role: str) -> WorkerInfo:
    return WorkerInfo(worker_id=worker_id, role=role, address=f"tcp://127.0.0.1:{len(worker_id) + 1}",
                      model="m", fingerprint="00", page_size=16, chunk_tokens=64, max_model_len=64)  # fmt: skip


@pytest.fixture
def registry():
    redis = EmbeddedRedis().start()
    registry, store = WorkerRegistry(redis.url), StoreClient(redis.url)
    yield registry, store
    registry.close()
    store.close()
    redis.stop()


def test_a_draining_worker_stays_live_but_gets_no_new_requests(registry):
    registry, store = registry
    refreshed = []
    view = ClusterView(
        registry, store, refresh_interval_s=0.1, stale_after_s=3.0, on_refresh=refreshed.append
    )
    registry.publish(info("p0", "prefill"), WorkerLoad())
    registry.publish(info("d0", "decode"), WorkerLoad(draining=True, num_running=3))
    registry.publish(info("d1", "decode"), WorkerLoad())
    asyncio.run(view.refresh())
    snapshot = view.current()
    assert [w.info.worker_id for w in snapshot.workers] == ["d0", "d1", "p0"]
    assert [w.info.worker_id for w in refreshed[-1]] == ["d0", "d1", "p0"], "live: its streams go on"
    assert [w.info.worker_id for w in snapshot.by_role("decode")] == ["d1"]
    assert [w.info.worker_id for w in snapshot.draining] == ["d0"]
    assert snapshot.draining[0].load.num_running == 3


def test_when_every_worker_drains_requests_get_a_503_that_says_so(registry):
    registry, store = registry
    view = ClusterView(registry, store, refresh_interval_s=0.1, stale_after_s=3.0)
    registry.publish(info("c0", "colocated"), WorkerLoad(draining=True))
    asyncio.run(view.refresh())
    with pytest.raises(ApiError) as refused:
        view.current()
    assert (refused.value.status, refused.value.code) == (503, "no_workers")
    assert "draining" in refused.value.message
