"""The router's view of the cluster: live workers from the registry, refreshed in the background,
and the cached prefix of a prompt on each prefill candidate, from the store's index.

A view not refreshed for ``stale_after_s`` (one lease by default, see ``RouterConfig``) is
unusable: requests get 503 rather than being routed to workers that may be gone. While the
registry cannot be read at all (Redis down or restarting), the last view stays usable for
``registry_grace_s``: the workers talk over ZeroMQ and do not need Redis to serve, and a worker
that died meanwhile fails its request, which is retried elsewhere. When it can be read again, the
workers of the last view stay in it for ``stale_after_s`` while they re-register. Workers that serve another model than the router's (another cluster sharing the Redis, a
misconfigured container) are left out of the view, with a warning, rather than sent token ids from
the wrong tokenizer. Every refresh reports the live workers to ``on_refresh`` (the dispatcher fails
requests whose workers lapsed).

A draining worker (shutting down: ``WorkerLoad.draining``) stays in the view's ``workers``, so the
requests it still serves are not failed as lost, but ``by_role`` leaves it out: nothing new is
routed to it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from kvstore.client import PrefixMatch, StoreClient
from kvstore.keys import chain_keys
from kvstore.types import IndexUnavailable, NodeInfo
from router.conductor.prefix import prefill_candidate
from router.conductor.types import PrefillCandidate
from router.errors import ApiError
from worker.registry import WorkerRegistry
from worker.types import PREFILL_ROLES, ROLES, WorkerState

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClusterSnapshot:
    workers: tuple[WorkerState, ...]
    taken_at: float  # time.monotonic() of the refresh
    store_nodes: tuple[NodeInfo, ...] = ()  # live store nodes and their usage, for /metrics

    def by_role(self, *roles: str) -> tuple[WorkerState, ...]:
        """The workers of these roles that take new requests (draining ones are left out)."""
        return tuple(w for w in self.workers if w.info.role in roles and not w.load.draining)

    @property
    def draining(self) -> tuple[WorkerState, ...]:
        """The workers that finish what they hold and take nothing new."""
        return tuple(w for w in self.workers if w.load.draining)


class ClusterView:
    def __init__(
        self,
        registry: WorkerRegistry,
        store: StoreClient,
        *,
        refresh_interval_s: float,
        stale_after_s: float,
        registry_grace_s: float = 30.0,
        on_refresh: Callable[[tuple[WorkerState, ...]], None] | None = None,
        model: str | None = None,
    ) -> None:
        self._registry = registry
        self.model = model  # the model directory's name the workers must report (None: any)
        self._foreign: set[str] = set()  # workers of another model already warned about
        self._store = store
        self.refresh_interval_s = refresh_interval_s
        self.stale_after_s = stale_after_s
        self.registry_grace_s = max(registry_grace_s, stale_after_s)
        self._on_refresh = on_refresh
        self._snapshot = ClusterSnapshot((), float("-inf"))
        self._last_error: str | None = None
        self._rejoin: tuple[tuple[WorkerState, ...], float] = ((), float("-inf"))  # see _rejoining

    async def refresh(self) -> None:
        """Read the registry once; on failure keep the old snapshot (it goes stale) and log once."""
        try:
            workers, nodes = await asyncio.to_thread(self._read)
        except IndexUnavailable as e:
            if self._last_error is None:
                log.warning("cannot read the worker registry (will keep trying): %s", e)
            self._last_error = str(e)
            return
        if self._last_error is not None:
            log.info("worker registry readable again")
            self._last_error = None
            self._rejoin = (self._snapshot.workers, time.monotonic() + self.stale_after_s)
        workers = self._rejoining(self._same_model(workers))
        self._snapshot = ClusterSnapshot(workers, time.monotonic(), nodes)
        if self._on_refresh is not None:
            self._on_refresh(workers)

    def _rejoining(self, workers: tuple[WorkerState, ...]) -> tuple[WorkerState, ...]:
        """Right after an outage a restarted Redis is empty and the workers re-register one
        heartbeat at a time: for ``stale_after_s`` the view keeps the ones it had that have not
        registered again yet, instead of refusing requests for want of them."""
        carried, until = self._rejoin
        if time.monotonic() >= until:
            return workers
        back = {w.info.worker_id for w in workers}
        return workers + tuple(w for w in carried if w.info.worker_id not in back)

    def _same_model(self, workers: tuple[WorkerState, ...]) -> tuple[WorkerState, ...]:
        if self.model is None:
            return workers
        foreign = {w.info.worker_id: w.info.model for w in workers if w.info.model != self.model}
        for worker_id in sorted(set(foreign) - self._foreign):
            log.warning(
                "ignoring worker %s: it serves model %r, this router serves %r",
                worker_id, foreign[worker_id], self.model,
            )  # fmt: skip
        self._foreign = set(foreign)
        return tuple(w for w in workers if w.info.worker_id not in foreign)

    def _read(self) -> tuple[tuple[WorkerState, ...], tuple[NodeInfo, ...]]:
        return tuple(self._registry.live()), tuple(self._store.nodes())

    async def run(self) -> None:
        """Refresh forever (a background task; cancel it to stop)."""
        while True:
            try:
                await self.refresh()
            except Exception:  # a bug or a malformed registry entry: keep refreshing (the view goes stale)
                log.exception("refreshing the cluster view failed")
            await asyncio.sleep(self.refresh_interval_s)

    @property
    def snapshot(self) -> ClusterSnapshot:
        return self._snapshot

    @property
    def fresh(self) -> bool:
        """Usable: refreshed within ``stale_after_s``, or within ``registry_grace_s`` while the
        registry cannot be read."""
        limit = self.registry_grace_s if self._last_error is not None else self.stale_after_s
        return self.age_s <= limit

    @property
    def registry_reachable(self) -> bool:
        """The last registry read succeeded (False while the view is carried through an outage)."""
        return self._last_error is None and self._snapshot.taken_at > float("-inf")

    @property
    def age_s(self) -> float:
        return time.monotonic() - self._snapshot.taken_at

    def current(self) -> ClusterSnapshot:
        """The snapshot to route by; 503 if it is stale or holds no worker."""
        if not self.fresh:  # the cause (with Redis's address) is in the router's log, not the reply
            reason = (
                "no registry read yet"
                if self._snapshot.taken_at == float("-inf")
                else f"the worker registry has not answered for {self.age_s:.0f}s"
            )
            raise ApiError(
                503,
                f"cluster state unavailable: {reason}; retry later",
                code="cluster_unavailable",
                retry_after_s=1,
            )
        if not self._snapshot.by_role(*ROLES):
            why = (
                "every live worker is draining (shutting down)"
                if self._snapshot.draining
                else "no worker is live"
            )
            raise ApiError(503, f"{why}; retry when one has registered", code="no_workers", retry_after_s=1)
        return self._snapshot

    async def prefill_candidates(
        self, snapshot: ClusterSnapshot, token_ids: Sequence[int]
    ) -> tuple[PrefillCandidate, ...]:
        """Prefill and colocated workers, each with the prompt's cached prefix on it (zeros if the
        index cannot be read: routing goes on)."""
        workers = snapshot.by_role(*PREFILL_ROLES)
        try:
            # the last prompt token is always computed (its logits give the first output token), so
            # only chunks before it can be reused: the prefill worker looks up the same keys
            matches = await asyncio.to_thread(self._match_all, workers, list(token_ids[:-1]))
        except IndexUnavailable as e:
            log.warning("prefix lookup failed, routing without it: %s", e)
            return tuple(PrefillCandidate(w) for w in workers)
        return tuple(
            prefill_candidate(w, m.per_node, m.anywhere, m.on_disk)
            for w in workers
            for m in (matches[_group(w)],)
        )

    def _match_all(
        self, workers: Sequence[WorkerState], token_ids: list[int]
    ) -> dict[tuple[int, str], PrefixMatch]:
        # workers with equal chunk size and fingerprint share keys: one index lookup per group
        matches = {}
        for group in {_group(w) for w in workers}:
            chunk_tokens, fingerprint = group
            try:
                keys = chain_keys(token_ids, chunk_tokens, bytes.fromhex(fingerprint))
            except ValueError:  # a worker published no usable fingerprint: no cache to find
                keys = []
            matches[group] = self._store.match(keys) if keys else PrefixMatch(Counter(), 0)
        return matches


def _group(worker: WorkerState) -> tuple[int, str]:
    return worker.info.chunk_tokens, worker.info.fingerprint
