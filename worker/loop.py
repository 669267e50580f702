"""The control loop every worker runs: drain its inbox, step its engine, report its load.

Pure control flow over duck-typed parts: ``handle(message)`` acts on one inbox message, ``step()``
runs one engine step, ``has_work()`` says whether a step would do anything, ``report()`` returns the
current ``WorkerLoad``, ``flush()`` sends outgoing messages that waited for their peer.

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
from collections.abc import Callable

from kvstore.types import IndexUnavailable
from transfer.channel import Inbox
from transfer.messages import Message
from worker.registry import WorkerRegistry
from worker.types import MEMBERSHIP, WorkerInfo, WorkerLoad

log = logging.getLogger("tandem.worker")

IDLE_POLL_S = 0.02
SENDING_POLL_S = 0.001  # while messages wait for a peer to take them


def run_worker_loop(
    info: WorkerInfo,
    inbox: Inbox,
    registry: WorkerRegistry,
    *,
    handle: Callable[[Message], None],
    step: Callable[[], None],
    has_work: Callable[[], bool],
    report: Callable[[], WorkerLoad],
    stop: threading.Event,
    flush: Callable[[], int] = lambda: 0,
    heartbeat_s: float = MEMBERSHIP.heartbeat_s,
) -> None:
    """Until ``stop``: take messages, step, snapshot the load; ``flush()`` sends what peers can
    take of the outgoing messages that wait and returns how many still wait (polled sooner)."""
    snapshot = [report()]  # replaced whole, never mutated: safe to read from the beater
    beater = threading.Thread(
        target=_beat, args=(info, registry, snapshot, stop, heartbeat_s), name="heartbeat", daemon=True
    )
    beater.start()
    try:
        waiting = 0
        while not stop.is_set():
            message = inbox.recv(0 if has_work() else SENDING_POLL_S if waiting else IDLE_POLL_S)
            while message is not None:
                handle(message)
                message = inbox.recv(0)
            if has_work():
                step()
            waiting = flush()
            snapshot[0] = report()
    finally:
        stop.set()
        beater.join(timeout=5)
        with contextlib.suppress(IndexUnavailable):  # if Redis is down the lease retires us anyway
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
