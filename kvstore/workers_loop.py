"""The control loop every worker runs: drain its inbox, step its engine, report its load.

Pure control flow over duck-typed parts, so prefill and decode workers (which may not import each
other) share it: ``handle(message)`` acts on one inbox message, ``step()`` runs one engine step,
``has_work()`` says whether a step would do anything, ``report()`` returns the current
``WorkerLoad`` fields. A failure to publish (Redis down) is logged and retried next beat: the
worker keeps serving what it has, and re-registers as soon as Redis is back.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable

from kvstore.types import IndexUnavailable
from kvstore.workers import WorkerInfo, WorkerLoad, WorkerRegistry
from transfer.channel import Inbox
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
    next_beat = 0.0
    try:
        while not stop.is_set():
            message = inbox.recv(0 if has_work() else IDLE_POLL_S)
            while message is not None:
                handle(message)
                message = inbox.recv(0)
            if has_work():
                step()
            now = time.monotonic()
            if now >= next_beat:
                next_beat = now + heartbeat_s
                try:
                    registry.publish(info, WorkerLoad(**report()))
                except IndexUnavailable as e:
                    log.warning("%s: cannot report to Redis (%s); retrying", info.worker_id, e)
    finally:
        with contextlib.suppress(IndexUnavailable):  # if Redis is down the TTL retires us anyway
            registry.remove(info.worker_id)
