"""A worker's graceful stop: finish what it holds, flush what it sends, then leave.

The first SIGTERM / SIGINT sets ``requested``; the loop (``worker.loop``) then calls ``begin``
once, and ``finished`` every turn until it says the worker may exit. While draining, the worker
publishes ``draining`` (the router routes nothing new to it but keeps it live, so its streams are
not failed as lost), refuses new prompts and keeps stepping. It is drained when it holds no request,
no outgoing message waits for its peer, it has stayed reachable for ``notice_s`` (every router has
seen it draining by then) and the loop has been idle for ``QUIET_S`` (its last sends have left the
process: sockets close without lingering). Past ``timeout_s`` it fails what it still holds
(``DRAINING``, so the router may route those again) and exits ``FAREWELL_S`` later at most.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from worker.types import MEMBERSHIP

log = logging.getLogger("tandem.worker")

QUIET_S = 0.2  # idle loop time before exiting: the last messages leave the ZeroMQ queues
FAREWELL_S = 1.0  # past the timeout, how long the failures of abandoned requests get to be sent


@dataclass
class Drain:
    """``start`` (returns the requests held), ``held`` (how many now) and ``abandon(reason)`` (fail
    them all) are the worker's (``BaseWorker.start_drain`` / ``held`` / ``abandon``)."""

    requested: threading.Event
    timeout_s: float
    start: Callable[[], int]
    held: Callable[[], int]
    abandon: Callable[[str], int]
    worker_id: str = "worker"
    notice_s: float = MEMBERSHIP.drain_notice_s
    clock: Callable[[], float] = time.monotonic
    started_at: float | None = field(default=None, init=False)
    _active_at: float = field(default=0.0, init=False)
    _abandoned: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        if self.timeout_s <= 0 or self.notice_s < 0:
            raise ValueError(
                f"need timeout_s > 0 and notice_s >= 0, got {self.timeout_s} and {self.notice_s}"
            )

    @property
    def started(self) -> bool:
        return self.started_at is not None

    def begin(self) -> None:
        self.started_at = self._active_at = self.clock()
        num_held = self.start()
        log.info("%s draining: %d request(s) in flight; exiting when they are done (at most %g s)",
                 self.worker_id, num_held, self.timeout_s)  # fmt: skip

    def finished(self, *, busy: bool, waiting: int) -> bool:
        """Whether the worker may exit now. ``busy``: this loop turn handled a message or ran a
        step; ``waiting``: outgoing messages that wait for their peer."""
        assert self.started_at is not None, "begin() first"
        now = self.clock()
        num_held = self.held()
        if busy or num_held or waiting:
            self._active_at = now
        elapsed = now - self.started_at
        if elapsed >= self.timeout_s and num_held:
            self._abandon(num_held)
            num_held = 0
        settled = not num_held and not waiting and now - self._active_at >= QUIET_S
        if (
            settled
            and elapsed >= min(self.notice_s, self.timeout_s)
            or elapsed >= self.timeout_s + FAREWELL_S
        ):
            self._log_exit(elapsed, waiting)
            return True
        return False

    def _abandon(self, num_held: int) -> None:
        reason = f"worker {self.worker_id} shut down: its drain timeout of {self.timeout_s:g}s passed"
        log.warning("%s: drain timeout of %g s passed; failing the %d request(s) it still holds",
                    self.worker_id, self.timeout_s, num_held)  # fmt: skip
        self._abandoned += self.abandon(reason)

    def _log_exit(self, elapsed: float, waiting: int) -> None:
        if self._abandoned or waiting:
            log.warning("%s stopped %.1f s into its drain: %d request(s) failed, %d message(s) unsent",
                        self.worker_id, elapsed, self._abandoned, waiting)  # fmt: skip
        else:
            log.info("%s drained in %.1f s", self.worker_id, elapsed)
