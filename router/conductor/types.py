"""Plain domain types of the conductor: what it decides over and what it decides.

Imports only ``worker.types`` (plain dataclasses), so policies stay pure and testable.
"""

from __future__ import annotations

from dataclasses import dataclass

from worker.types import WorkerState


@dataclass(frozen=True)
class PrefillCandidate:
    """A worker that can prefill the request (role ``prefill`` or ``colocated``), with the
    prompt's cached prefix as the index sees it: ``cached_local_tokens`` on the worker's own store
    node (reused in place), ``cached_store_tokens`` more beyond those on another node (fetched);
    ``cached_disk_tokens`` of those two together sit on a store node's disk tier only (read first)."""

    worker: WorkerState
    cached_local_tokens: int = 0
    cached_store_tokens: int = 0
    cached_disk_tokens: int = 0

    @property
    def worker_id(self) -> str:
        return self.worker.info.worker_id

    @property
    def colocated(self) -> bool:
        return self.worker.info.role == "colocated"


@dataclass(frozen=True)
class RoutingProblem:
    """One request against one cluster snapshot. ``prefill`` holds colocated workers too;
    ``decode`` holds the decode-role workers (a colocated candidate decodes on itself)."""

    num_prompt_tokens: int
    max_tokens: int
    prefill: tuple[PrefillCandidate, ...]
    decode: tuple[WorkerState, ...]
    turn: int = 0  # requests routed before this one (round robin's position)


@dataclass(frozen=True)
class Route:
    """Where a request goes. ``decode`` is None for a colocated worker (it decodes itself)."""

    prefill: PrefillCandidate
    decode: WorkerState | None
    predicted_ttft_s: float = 0.0
    predicted_tbt_s: float = 0.0

    @property
    def decode_worker_id(self) -> str:
        return self.decode.info.worker_id if self.decode is not None else self.prefill.worker_id


@dataclass(frozen=True)
class Rejection:
    """The request cannot meet its SLO now (``reason``: ``ttft_slo`` or ``tbt_slo``), or nothing
    can serve it (``no_workers``, ``no_decode``). ``retry_after_s`` is a hint for the client."""

    reason: str
    message: str
    retry_after_s: int = 1
