"""The recent past of the series the dashboard draws over time, kept by the router.

The page computes everything from ``/metrics``; this only spares a page opened now from starting
with empty charts. Every ``interval_s`` the router records its prompt and cached-token totals, the
overall hit-rate gauge, requests in flight and the workers' running and queued sequences (the same
numbers ``/metrics`` shows at that moment), and keeps the last ``window_s``:
``GET /dashboard/history``.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Sequence

from router.observe.metrics import TIERS, RouterMetrics
from worker.types import WorkerState


class MetricsHistory:
    def __init__(
        self,
        metrics: RouterMetrics,
        workers: Callable[[], Sequence[WorkerState]],
        *,
        interval_s: float = 1.0,
        window_s: float = 600.0,
    ) -> None:
        if interval_s <= 0 or window_s < interval_s:
            raise ValueError(f"need 0 < interval_s <= window_s, got {interval_s}, {window_s}")
        self.interval_s = interval_s
        self._metrics = metrics
        self._workers = workers
        self._samples: deque[dict] = deque(maxlen=int(window_s / interval_s) + 1)

    def sample(self, now: float | None = None) -> None:
        totals = self._metrics.totals()
        workers = self._workers()
        self._samples.append(
            {
                "t": time.time() if now is None else now,
                "prompt": totals.prompt_tokens,
                "cached": {tier: totals.cached_tokens[tier] for tier in TIERS},
                "hit_rate": totals.hit_rate,
                "in_flight": totals.in_flight,
                "running": sum(w.load.num_running for w in workers),
                "waiting": sum(w.load.num_waiting for w in workers),
            }
        )

    def to_json(self) -> dict:
        return {"interval_s": self.interval_s, "samples": list(self._samples)}

    async def run(self) -> None:
        """Sample forever (a background task; cancel it to stop)."""
        while True:
            self.sample()
            await asyncio.sleep(self.interval_s)
