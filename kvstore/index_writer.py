"""A store node's index writes, off its request loop.

The node's one thread never waits on Redis: it hands each change to what it holds to an
``IndexWriter`` and answers the request that made the change once the change is published
(``Ticket.done``). The writer's ``fileno`` turns readable when tickets complete, so the node
polls it beside its socket. Changes go out in the order they were handed over, and whatever
queued up while one transaction was in flight goes out together in the next: a burst of puts
costs one Redis round trip, not one each, and a put's reply waits for its own publish only.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading

from kvstore.index import IndexDelta, StoreIndex

log = logging.getLogger(__name__)


class Ticket:
    """One handed-over change. ``done`` once its transaction ran; ``error`` is what it raised
    (``IndexUnavailable`` when Redis was unreachable), None if it was published."""

    __slots__ = ("done", "error")

    def __init__(self) -> None:
        self.done = False
        self.error: BaseException | None = None


class IndexWriter:
    """Publishes ``node_id``'s index deltas through ``index`` on a thread of its own, in order."""

    def __init__(self, index: StoreIndex, node_id: str) -> None:
        self.index = index
        self.node_id = node_id
        self._cv = threading.Condition()
        self._queue: list[tuple[IndexDelta, dict[str, int], Ticket]] = []
        self._busy = False
        self._closed = False
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._thread = threading.Thread(target=self._run, name="index-writer", daemon=True)
        self._thread.start()

    def submit(self, delta: IndexDelta, counters: dict[str, int]) -> Ticket:
        """Queue ``delta`` (and the node's counters as of it) for publishing."""
        ticket = Ticket()
        with self._cv:
            if self._closed:
                raise RuntimeError("the index writer is closed")
            self._queue.append((delta, counters, ticket))
            self._cv.notify()
        return ticket

    def fileno(self) -> int:
        """A descriptor that is readable once tickets have completed since ``clear_wakeups``."""
        return self._wake_r

    def clear_wakeups(self) -> None:
        with contextlib.suppress(BlockingIOError):
            while os.read(self._wake_r, 4096):
                pass

    def flush(self) -> None:
        """Wait until every change handed over so far has been published (or has failed)."""
        with self._cv:
            self._cv.wait_for(lambda: not self._queue and not self._busy)

    def close(self) -> None:
        """Publish what is queued, then stop the thread."""
        with self._cv:
            self._closed = True
            self._cv.notify_all()
        self._thread.join()
        os.close(self._wake_r)
        os.close(self._wake_w)
        self.index.close()

    def _run(self) -> None:
        while True:
            with self._cv:
                self._cv.wait_for(lambda: self._queue or self._closed)
                if not self._queue:
                    return
                batch, self._queue = self._queue, []
                self._busy = True
            error: BaseException | None = None
            try:
                self.index.publish_batch(self.node_id, [delta for delta, _, _ in batch], batch[-1][1])
            except BaseException as e:  # the node answers each request with it (and raises if unexpected)
                error = e
            finally:  # whatever happened, the tickets complete and flush() returns
                for _, _, ticket in batch:
                    ticket.error, ticket.done = error, True
                with self._cv:
                    self._busy = False
                    self._cv.notify_all()
                with contextlib.suppress(BlockingIOError):  # a full pipe: wake-ups are pending anyway
                    os.write(self._wake_w, b"\0")
