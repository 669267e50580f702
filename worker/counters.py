"""What a worker counts for its load report: prompt tokens prefilled and reused, KV moved."""

from __future__ import annotations

import threading

from worker.types import TRANSFER_KINDS, WorkerTotals


class WorkerCounters:
    """Accumulates a worker's ``WorkerTotals``. The loop thread counts everything but the store
    writes, which its chunk writer's thread counts (``worker.writeback``): transfers take a lock."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.prompt_tokens = 0
        self.cached_local_tokens = 0
        self.cached_store_tokens = 0
        self._transfer = {kind: [0, 0.0] for kind in TRANSFER_KINDS}

    def prefilled(self, prompt_tokens: int, cached_local: int, cached_store: int) -> None:
        """One request's prefill, as its first ``TokenEvent`` reports it to the router."""
        self.prompt_tokens += prompt_tokens
        self.cached_local_tokens += cached_local
        self.cached_store_tokens += cached_store

    def transferred(self, kind: str, nbytes: int, seconds: float) -> None:
        """``nbytes`` of KV moved in ``seconds``; ``kind`` is one of ``TRANSFER_KINDS``."""
        with self._lock:
            total = self._transfer[kind]
            total[0] += nbytes
            total[1] += seconds

    def totals(self) -> WorkerTotals:
        moved = {}
        with self._lock:
            for kind, (nbytes, seconds) in self._transfer.items():
                moved[f"{kind}_bytes"] = nbytes
                moved[f"{kind}_s"] = seconds
        return WorkerTotals(
            prompt_tokens=self.prompt_tokens,
            cached_local_tokens=self.cached_local_tokens,
            cached_store_tokens=self.cached_store_tokens,
            **moved,
        )
