"""Worker membership in Redis, and the worker loop's heartbeat during long engine steps."""

from __future__ import annotations

import threading
import time

from transfer.channel import Inbox
from worker.loop import run_worker_loop
from worker.registry import WorkerRegistry
from worker.types import WorkerInfo, WorkerLoad

INFO = WorkerInfo("prefill-0", "prefill", "tcp://127.0.0.1:1", "m", "ab", 16, 64, 2048, "store-0")


def test_publish_then_lapse(redis_server):
    registry = WorkerRegistry(redis_server.url, ttl_s=0.5)
    registry.publish(INFO, WorkerLoad(num_running=2, step_ms=3.5))
    (state,) = registry.live()
    assert state.info == INFO and state.load.num_running == 2 and state.load.step_ms == 3.5
    time.sleep(0.8)
    assert registry.live() == []


def test_a_worker_busy_in_a_long_step_stays_live(redis_server):
    """One engine step may take seconds on a CPU: the heartbeat must not wait for it."""
    registry = WorkerRegistry(redis_server.url, ttl_s=0.6)
    inbox = Inbox("tcp://127.0.0.1:0")
    stop = threading.Event()
    steps = []

    def slow_step() -> None:
        steps.append(time.monotonic())
        time.sleep(2.0)  # four TTLs

    loop = threading.Thread(
        target=run_worker_loop,
        args=(INFO, inbox, registry),
        kwargs=dict(
            handle=lambda m: None,
            step=slow_step,
            has_work=lambda: len(steps) < 1,
            report=lambda: WorkerLoad(num_running=len(steps)),
            stop=stop,
            heartbeat_s=0.2,
        ),  # fmt: skip
    )
    loop.start()
    try:
        seen = []
        deadline = time.monotonic() + 2.5
        while time.monotonic() < deadline:
            seen.append(len(registry.live()))
            time.sleep(0.1)
        assert steps, "the step ran"
        assert min(seen[3:]) == 1, f"worker dropped out during its step: {seen}"
    finally:
        stop.set()
        loop.join(timeout=10)
        inbox.close()
    assert registry.live() == [], "a stopped worker deregisters"
