"""Worker failures, in one place: what each one means for the request, which worker is to blame,
how long that worker is avoided, whether the request is tried again, and what becomes of the aborts
a missing worker could not receive.

Timings come from ``worker.types.MEMBERSHIP``: a worker missing from the registry for
``lost_grace_s`` has failed its requests (the grace rides out a Redis restart); a worker that
failed a request is a suspect for ``suspect_s``, longer than a lease, so a dead one has left the
registry by the time it would be tried again; an abort for a missing worker is kept for
``abort_memory_s`` and delivered if it comes back (a worker that stalled past its lease would
otherwise go on generating for requests the router already failed).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TypeVar

from router.errors import ApiError
from transfer.messages import BAD_REQUEST, DRAINING, INTERNAL, UNAVAILABLE, RequestFailed
from worker.types import MEMBERSHIP

log = logging.getLogger(__name__)
T = TypeVar("T")
_STATUS_OF_CODE = {BAD_REQUEST: 400, UNAVAILABLE: 503, DRAINING: 503, INTERNAL: 500}


# ---- what a failure means for the request ---------------------------------------------------


def unreachable(worker_id: str, reason: object) -> ApiError:
    """The prefill worker accepted no task (dead or stuck): it is to blame."""
    return ApiError(
        503, f"prefill worker {worker_id} is unreachable: {reason}", code="worker_unreachable",
        failed_worker=worker_id,
    )  # fmt: skip


def silent(worker_id: str, timeout_s: float) -> ApiError:
    """No event for ``timeout_s``: nobody is blamed (the worker may only be slow)."""
    return ApiError(
        504, f"worker {worker_id} sent nothing for this request in {timeout_s:g}s; gave up",
        code="worker_timeout",
    )  # fmt: skip


def lost(worker_id: str) -> ApiError:
    """A worker the request depends on left the registry."""
    return ApiError(
        503, f"worker {worker_id} stopped heartbeating (it died or hung) while serving this request",
        code="worker_lost", failed_worker=worker_id,
    )  # fmt: skip


def refused(event: RequestFailed, decode_id: str) -> ApiError:
    """A worker failed the request. ``DRAINING``: the worker that answers is shutting down and is
    avoided; ``UNAVAILABLE`` from the prefill worker means the decode worker did not take the KV:
    the decode worker is to blame; otherwise nobody is."""
    failed = event.worker_id if event.code == DRAINING else decode_id if event.code == UNAVAILABLE else None
    return ApiError(
        _STATUS_OF_CODE.get(event.code, 500), f"worker {event.worker_id} failed the request: {event.message}",
        code=event.code, failed_worker=failed,
    )  # fmt: skip


def should_retry(error: ApiError, attempt: int, max_retries: int) -> bool:
    """Route the request again (to other workers) when a worker is to blame and retries are left.
    Only valid while nothing of the response has been sent."""
    return error.failed_worker is not None and attempt < max_retries


# ---- who is avoided ------------------------------------------------------------------------


class Suspects:
    """Workers that failed a request recently: they get no new requests for ``suspect_s``, unless
    no other worker of their kind is live."""

    def __init__(self, suspect_s: float = MEMBERSHIP.suspect_s) -> None:
        self.suspect_s = suspect_s
        self._until: dict[str, float] = {}  # worker id -> time.monotonic() it is trusted again

    def blame(self, error: ApiError) -> str | None:
        """Make the worker ``error`` blames a suspect; return its id (None: nobody is blamed)."""
        worker_id = error.failed_worker
        if worker_id is not None:
            log.warning("avoiding worker %s for %gs: %s", worker_id, self.suspect_s, error.message)
            self._until[worker_id] = time.monotonic() + self.suspect_s
        return worker_id

    def trusted(self, workers: tuple[T, ...], worker_id: Callable[[T], str]) -> tuple[T, ...]:
        """``workers`` less the recent suspects, or all of them if none else is left."""
        now = time.monotonic()
        self._until = {w: until for w, until in self._until.items() if until > now}
        trusted = tuple(w for w in workers if worker_id(w) not in self._until)
        return trusted or workers


class MissingWorkers:
    """Watched workers absent from the registry, and since when; lost after ``lost_grace_s``."""

    def __init__(self, lost_grace_s: float = MEMBERSHIP.lost_grace_s) -> None:
        self.lost_grace_s = lost_grace_s
        self._since: dict[str, float] = {}

    def lost(self, watched: set[str], live: set[str], now: float) -> set[str]:
        """The watched workers missing from ``live`` for at least the grace period (a worker that
        reappears, or is no longer watched, is forgiven)."""
        for worker_id in list(self._since):
            if worker_id in live or worker_id not in watched:
                del self._since[worker_id]
        for worker_id in watched - live:
            self._since.setdefault(worker_id, now)
        return {w for w, since in self._since.items() if now - since >= self.lost_grace_s}


class DeferredAborts:
    """Aborts meant for workers missing from the registry, kept for ``abort_memory_s``.
    Thread-safe: requests add from the loop, registry refreshes take."""

    def __init__(self, abort_memory_s: float = MEMBERSHIP.abort_memory_s) -> None:
        self.abort_memory_s = abort_memory_s
        self._by_address: dict[str, dict[str, float]] = {}  # address -> {request id: when}
        self._lock = threading.Lock()

    def add(self, address: str, request_id: str) -> None:
        with self._lock:
            self._by_address.setdefault(address, {})[request_id] = time.monotonic()

    def take(self, live_addresses: set[str]) -> dict[str, list[str]]:
        """The unexpired aborts of the workers that are back, by address (removed from here);
        expired ones are forgotten."""
        now = time.monotonic()
        with self._lock:
            back = {a: self._by_address.pop(a) for a in list(self._by_address) if a in live_addresses}
            for address, aborts in list(self._by_address.items()):
                kept = {r: t for r, t in aborts.items() if now - t < self.abort_memory_s}
                if kept:
                    self._by_address[address] = kept
                else:
                    del self._by_address[address]
        fresh = {
            a: [r for r, t in aborts.items() if now - t < self.abort_memory_s] for a, aborts in back.items()
        }
        return {a: request_ids for a, request_ids in fresh.items() if request_ids}
