"""The control loop every worker runs: drain its inbox, step its engine, report its load.

Pure control flow over duck-typed parts: ``handle(message)`` acts on one inbox message, ``step()``
runs one engine step, ``has_work()`` says whether a step would do anything, ``report()`` returns the
current ``WorkerLoad``, ``flush()`` sends outgoing messages that waited for their peer.

Heartbeats go out from a thread of their own: one engine step can take seconds on a CPU (a long
prompt chunk), and a worker that is busy computing must not look dead to the router. The loop
thread takes a load snapshot after every step (engine state is only touched by that thread); the
heartbeat thread publishes the latest snapshot. A failure to publish (Redis down) is logged and
retried on the next beat: the worker keeps serving and re-registers as soon as Redis is back.

With a ``Drain`` (``worker.drain``), once it is requested the loop publishes the worker as draining
at once (not at the next beat) and runs until the drain says it is done; ``stop`` ends it at once.
Either way the worker deregisters on its way out.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable

from kvstore.types import IndexUnavailable
from transfer.channel import Inbox
from transfer.messages import Message
from worker.drain import Drain
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
    drain: Drain | None = None,
) -> None:
    """Until ``stop`` (or until ``drain``, once requested, is done): take messages, step, snapshot
    the load; ``flush()`` sends what peers can take of the outgoing messages that wait and returns
    how many still wait (polled sooner)."""
    snapshot = [report()]  # replaced whole, never mutated: safe to read from the beater
    beater = threading.Thread(
        target=_beat, args=(info, registry, snapshot, stop, heartbeat_s), name="heartbeat", daemon=True
    )
    beater.start()
    try:
        waiting = 0
        while not stop.is_set():
            busy = _turn(inbox, handle, step, has_work, waiting)
            waiting = flush()
            snapshot[0] = report()
            if drain is not None and _drained(drain, info, registry, snapshot, report, busy, waiting):
                break
    finally:
        stop.set()
        beater.join(timeout=5)
        with contextlib.suppress(IndexUnavailable):  # if Redis is down the lease retires us anyway
            registry.remove(info.worker_id)


def _turn(
    inbox: Inbox,
    handle: Callable[[Message], None],
    step: Callable[[], None],
    has_work: Callable[[], bool],
    waiting: int,
) -> bool:
    """Take every message that came (waiting a little if idle), then step once if there is work;
    whether anything was done."""
    message = inbox.recv(0 if has_work() else SENDING_POLL_S if waiting else IDLE_POLL_S)
    busy = message is not None
    while message is not None:
        handle(message)
        message = inbox.recv(0)
    if has_work():
        step()
        busy = True
    return busy


def _drained(
    drain: Drain,
    info: WorkerInfo,
    registry: WorkerRegistry,
    snapshot: list[WorkerLoad],
    report: Callable[[], WorkerLoad],
    busy: bool,
    waiting: int,
) -> bool:
    """Whether a requested drain is done; its first turn begins it and publishes it at once (the
    router stops routing here within one view refresh instead of one heartbeat)."""
    if not drain.requested.is_set():
        return False
    if drain.started:
        return drain.finished(busy=busy, waiting=waiting)
    drain.begin()
    snapshot[0] = report()
    _publish(info, registry, snapshot[0])
    return False


def _publish(info: WorkerInfo, registry: WorkerRegistry, load: WorkerLoad) -> None:
    try:
        registry.publish(info, load)
    except IndexUnavailable as e:
        log.warning("%s: cannot report to Redis (%s); retrying", info.worker_id, e)


def _beat(
    info: WorkerInfo,
    registry: WorkerRegistry,
    snapshot: list[WorkerLoad],
    stop: threading.Event,
    period_s: float,
) -> None:
    while True:
        _publish(info, registry, snapshot[0])
        if stop.wait(period_s):
            return
