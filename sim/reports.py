"""Instance loads as the router sees them: each instance's report as of its last heartbeat.

A real worker publishes its load every heartbeat and the router reads the registry in between, so
a load the router acts on is up to a heartbeat old. Here each instance's report is refreshed at
most once per ``lag_s`` of virtual time, when the router next looks: the same staleness, at the
cost of the reads only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from worker.types import WorkerLoad, WorkerState

if TYPE_CHECKING:
    from sim.cluster import SimCluster

PAGE_TOKENS = 16
FITTED_STEPS = 50  # a busy worker's step-cost fit has seen this many steps: the router trusts it


class LoadReporter:
    def __init__(self, cluster: SimCluster, lag_s: float) -> None:
        self.cluster = cluster
        self.lag_s = lag_s
        self._states: dict[str, WorkerState] = {}
        self._next_at = float("-inf")

    def states(self, now: float) -> dict[str, WorkerState]:
        if now >= self._next_at:
            self._states = {wid: self.current(wid) for wid in self.cluster.infos}
            self._next_at = now + self.lag_s
        return self._states

    def current(self, worker_id: str) -> WorkerState:
        """``worker_id``'s load now, as it would publish it."""
        c = self.cluster
        p = c.profile.prefill
        prefill = c.prefill.get(worker_id)
        decode = c.decode.get(worker_id)
        load = {"step_fixed_s": p.fixed_s, "step_per_token_s": p.per_token_s, "step_samples": FITTED_STEPS}
        if prefill is not None:
            load.update(num_waiting=len(prefill.queue), queued_prefill_tokens=prefill.queued_tokens)
        if decode is not None:
            total = decode.capacity_tokens // PAGE_TOKENS
            load.update(
                num_running=len(decode.running),
                num_waiting=load.get("num_waiting", 0) + len(decode.waiting),
                free_pages=max(0, total - decode.context_tokens // PAGE_TOKENS),
                total_pages=total,
                step_ms=decode.last_step_s * 1000 if decode.busy else 0.0,
            )
        return WorkerState(c.infos[worker_id], WorkerLoad(**load))
