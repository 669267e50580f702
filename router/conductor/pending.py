"""Work the router has sent out that the workers' load reports may not show yet: prefill queues
(``PendingPrefills``) and decode KV (``PendingDecodes``).

A worker reports its queue every heartbeat (``worker.types.MEMBERSHIP.heartbeat_s``) and the
router reads the registry every refresh, so for up to a second a request the router just routed is
invisible in that worker's load: a burst would all go to the worker that looked idle (herding).
The router therefore counts what it routed itself, per prefill worker, from the routing decision
until the worker reports the prefill done (its first token) or the request ends, and the conductor
sees each worker's queue as the larger of the reported one and this count (the two overlap once
the worker has the request).
"""

from __future__ import annotations

import dataclasses
from collections import Counter

from router.conductor.types import PrefillCandidate
from worker.types import WorkerState


class PendingPrefills:
    def __init__(self) -> None:
        self._requests: dict[str, tuple[str, int]] = {}  # request id -> (worker id, uncached tokens)
        self._tokens: Counter[str] = Counter()
        self._count: Counter[str] = Counter()

    def add(self, request_id: str, worker_id: str, uncached_tokens: int) -> None:
        self.done(request_id)
        self._requests[request_id] = (worker_id, uncached_tokens)
        self._tokens[worker_id] += uncached_tokens
        self._count[worker_id] += 1

    def done(self, request_id: str) -> None:
        """The request's prefill is over (or the request is): idempotent."""
        entry = self._requests.pop(request_id, None)
        if entry is None:
            return
        worker_id, tokens = entry
        self._tokens[worker_id] -= tokens
        self._count[worker_id] -= 1
        if not self._count[worker_id]:
            del self._tokens[worker_id], self._count[worker_id]

    def tokens(self, worker_id: str) -> int:
        return self._tokens[worker_id]

    def adjust(self, candidate: PrefillCandidate) -> PrefillCandidate:
        """``candidate`` with its worker's queue no shorter than what the router has pending there."""
        wid = candidate.worker_id
        if not self._count[wid]:
            return candidate
        load = candidate.worker.load
        seen = dataclasses.replace(
            load,
            queued_prefill_tokens=max(load.queued_prefill_tokens, self._tokens[wid]),
            num_waiting=max(load.num_waiting, self._count[wid]),
        )
        return dataclasses.replace(candidate, worker=WorkerState(candidate.worker.info, seen))


class PendingDecodes:
    """KV the router has committed on each decode worker, so that a burst is not all sent to the
    worker whose last report had room.

    Every request routed to a decode worker commits its final size there (prompt + ``max_tokens``,
    in pages) until it ends. The conductor sees a decode worker's free pages as its total less the
    larger of what it reported in use and what the router committed: the two overlap once the
    worker holds the requests, and the commitment is the larger while hand-offs are on their way
    and sequences wait for room.
    """

    def __init__(self) -> None:
        self._requests: dict[str, tuple[str, int]] = {}  # request id -> (worker id, pages)
        self._pages: Counter[str] = Counter()

    def add(self, request_id: str, worker_id: str, pages: int) -> None:
        self.done(request_id)
        self._requests[request_id] = (worker_id, pages)
        self._pages[worker_id] += pages

    def done(self, request_id: str) -> None:
        """The request ended (or left this worker): idempotent."""
        entry = self._requests.pop(request_id, None)
        if entry is not None:
            worker_id, pages = entry
            self._pages[worker_id] -= pages
            if not self._pages[worker_id]:
                del self._pages[worker_id]

    def pages(self, worker_id: str) -> int:
        return self._pages[worker_id]

    def adjust(self, worker: WorkerState) -> WorkerState:
        """``worker`` with no more free pages than the router's commitments leave."""
        committed = self._pages[worker.info.worker_id]
        load = worker.load
        if committed <= load.total_pages - load.free_pages:
            return worker
        return WorkerState(
            worker.info, dataclasses.replace(load, free_pages=max(0, load.total_pages - committed))
        )
