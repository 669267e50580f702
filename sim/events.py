"""The event loop: callbacks ordered by virtual time, ties broken by scheduling order."""

from __future__ import annotations

import heapq
from collections.abc import Callable


class EventLoop:
    def __init__(self) -> None:
        self.now = 0.0
        self._queue: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = 0
        self.num_events = 0

    def at(self, time_s: float, callback: Callable[[], None]) -> None:
        """Run ``callback`` at virtual ``time_s`` (not before now: the past is the present)."""
        self._seq += 1
        heapq.heappush(self._queue, (max(time_s, self.now), self._seq, callback))

    def after(self, delay_s: float, callback: Callable[[], None]) -> None:
        self.at(self.now + delay_s, callback)

    def run(self, until_s: float = float("inf")) -> None:
        """Run events in time order until none is left (or the next is after ``until_s``)."""
        queue = self._queue
        while queue and queue[0][0] <= until_s:
            time_s, _, callback = heapq.heappop(queue)
            self.now = time_s
            self.num_events += 1
            callback()

    def __len__(self) -> int:
        return len(self._queue)
