"""The control loop every worker runs: drain its inbox, step its engine, report its load.

Pure control flow over duck-typed parts, so prefill and decode workers (which may not import each
other) share it: ``handle(message)`` acts on one inbox message, ``step()`` runs one engine step,
``has_work()`` says whether a step would do anything, ``report()`` returns the current
``WorkerLoad`` fields.

Heartbeats go out from a thread of their own: one engine step can take seconds on a CPU (a long
prompt chunk), and a worker that is busy computing must not look dead to the router. The loop
thread takes a load snapshot after every step (engine state is only touched by that thread); the
heartbeat thread publishes the latest snapshot. A failure to publish (Redis down) is logged and
retried on the next beat: the worker keeps serving and re-registers as soon as Redis is back.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable

from kvstore.serve import stop_on_signals
from kvstore.tensors import nbytes
from kvstore.types import IndexUnavailable, StoreError
from kvstore.workers import WorkerCounters, WorkerInfo, WorkerLoad, WorkerRegistry
from transfer.channel import Inbox
from transfer.errors import TransferError
from transfer.messages import Message

log = logging.getLogger("tandem.worker")

IDLE_POLL_S = 0.02


def run_worker_loop(
    info: WorkerInfo,
    inbox: Inbox,
    registry: WorkerRegistry,
    *,
    handle: Callable[[Message], None],
    step: Callable[[], None],
    has_work: Callable[[], bool],
    report: Callable[[], dict],
    stop: threading.Event,
    heartbeat_s: float = 0.5,
) -> None:
    snapshot = [WorkerLoad(**report())]  # replaced whole, never mutated: safe to read from the beater
    beater = threading.Thread(
        target=_beat, args=(info, registry, snapshot, stop, heartbeat_s), name="heartbeat", daemon=True
    )
    beater.start()
    try:
        while not stop.is_set():
            message = inbox.recv(0 if has_work() else IDLE_POLL_S)
            while message is not None:
                handle(message)
                message = inbox.recv(0)
            if has_work():
                step()
            snapshot[0] = WorkerLoad(**report())
    finally:
        stop.set()
        beater.join(timeout=5)
        with contextlib.suppress(IndexUnavailable):  # if Redis is down the TTL retires us anyway
            registry.remove(info.worker_id)


def _beat(
    info: WorkerInfo,
    registry: WorkerRegistry,
    snapshot: list[WorkerLoad],
    stop: threading.Event,
    period_s: float,
) -> None:
    while True:
        try:
            registry.publish(info, snapshot[0])
        except IndexUnavailable as e:
            log.warning("%s: cannot report to Redis (%s); retrying", info.worker_id, e)
        if stop.wait(period_s):
            return


def put_chunks(store, counters: WorkerCounters, request_id: str, keys: list[bytes], chunks: list) -> None:
    """Write a request's chunks to the worker's store node (``store``: its ``StoreClient``) and count
    the transfer; store trouble is logged, never the request's failure (the chunks are a cache)."""
    try:
        started = time.perf_counter()
        store.put(keys, chunks)
        counters.transferred("store_put", nbytes(chunks), time.perf_counter() - started)
    except (StoreError, TransferError) as e:
        log.warning("request %s: could not write %d chunks to the store: %s", request_id, len(chunks), e)


def serve_worker(info: WorkerInfo, inbox: Inbox, redis_url: str, worker) -> None:
    """A worker process's whole life after start-up: ``worker`` (with ``handle``, ``step``,
    ``has_work``, ``report`` and ``close``) serves until SIGTERM / SIGINT, then deregisters and closes."""
    log.info("%s ready: inbox %s", info.worker_id, inbox.address)
    try:
        run_worker_loop(
            info, inbox, WorkerRegistry(redis_url), handle=worker.handle, step=worker.step,
            has_work=worker.has_work, report=worker.report, stop=stop_on_signals(),
        )  # fmt: skip
    finally:
        worker.close()
        inbox.close()
    log.info("%s stopped", info.worker_id)
