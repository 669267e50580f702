"""A prefill instance in virtual time (also the prefill half of a colocated one).

A request (``PrefillJob``) first reuses the leading chunks in the instance's own cache (its
engine's pages), then fetches the longest prefix the store nodes hold beyond those (when
fetching is cheaper than recomputing, as the worker decides), then computes the rest in chunked
prefill steps: each step spends up to ``max_batched_tokens`` on the queue, FCFS, and costs the
profile's prefill step time plus the fetches of the jobs it starts (Tandem's worker fetches on its
loop thread). When a job's last token is computed its first token is out: the prompt's chunks
enter the instance's cache and, those no node had, its store node.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from router.conductor.profile import CostProfile
from sim.caches import LruCache, StoreIndex, reachable_prefix
from sim.events import EventLoop
from sim.trace import TraceRequest


@dataclass
class PrefillJob:
    request: TraceRequest
    decode_id: str | None  # None: decode here (colocated)
    remaining: int = 0  # tokens still to compute
    context: int = 0  # tokens already held (cached, fetched or computed)
    started: bool = False
    cached_local: int = 0
    cached_store: int = 0
    fetch_s: float = 0.0
    store_chunks: int = 0  # leading chunks some store node already held


class PrefillInstance:
    def __init__(
        self, instance_id: str, profile: CostProfile, loop: EventLoop, store: StoreIndex | None,
        store_node_id: str, on_prefilled: Callable[[PrefillJob, float], None], *, remote_fetch: bool = True,
        wake: Callable[[], None] | None = None,
    ) -> None:  # fmt: skip
        """``remote_fetch`` False: reuse chunks on its own store node only. ``wake``: what starts
        work on a submitted job when idle (by default its own steps; a colocated instance steps
        its prefill half inside its own steps)."""
        self.instance_id = instance_id
        self.profile = profile
        self.loop = loop
        self.store = store  # None: no store (colocated)
        self.store_node_id = store_node_id
        self.block_tokens = profile.kv.chunk_tokens
        self.cache = LruCache(profile.kv.cache_tokens_per_instance // self.block_tokens)
        self.queue: deque[PrefillJob] = deque()
        self.busy = False
        self.on_prefilled = on_prefilled
        self.remote_fetch = remote_fetch
        self._wake = wake or self._step

    @property
    def queued_tokens(self) -> int:
        return sum(job.remaining if job.started else job.request.input_tokens for job in self.queue)

    def submit(self, job: PrefillJob) -> None:
        self.queue.append(job)
        if not self.busy:
            self._wake()

    def _start(self, job: PrefillJob) -> float:
        """Reuse, fetch, and count what is left; returns the fetch time."""
        keys = job.request.keys
        local = self.cache.prefix_hits(keys)
        fetched = 0
        if self.store is not None:
            per_node, anywhere = self.store.match(keys)
            anywhere = reachable_prefix(per_node, anywhere, self.store_node_id, self.remote_fetch)
            job.store_chunks = anywhere
            more = max(0, anywhere - local) * self.block_tokens
            if more and self.profile.fetch_s(more) < self.profile.prefill.per_token_s * more:
                self.store.fetch(keys[local:anywhere])
                fetched, job.fetch_s = anywhere - local, self.profile.fetch_s(more)
        job.cached_local, job.cached_store = local * self.block_tokens, fetched * self.block_tokens
        job.context = job.cached_local + job.cached_store
        job.remaining = job.request.input_tokens - job.context
        job.started = True
        return job.fetch_s

    def plan_step(self, budget: int) -> tuple[list[tuple[PrefillJob, int]], int, float, float]:
        """The jobs this step advances (FCFS, up to ``budget`` tokens): ``(taken, tokens,
        context products, fetch seconds)``."""
        taken, tokens, products, fetch_s = [], 0, 0.0, 0.0
        for job in self.queue:
            if tokens >= budget:
                break
            if not job.started:
                fetch_s += self._start(job)
            n = min(job.remaining, budget - tokens)
            taken.append((job, n))
            tokens += n
            products += n * (job.context + n / 2)
        return taken, tokens, products, fetch_s

    def _step(self) -> None:
        if not self.queue:
            self.busy = False
            return
        self.busy = True
        taken, tokens, products, fetch_s = self.plan_step(self.profile.prefill.max_batched_tokens)
        duration = self.profile.prefill_step_s(tokens, products) + fetch_s
        self.loop.after(duration, lambda: self._finish_step(taken))

    def _finish_step(self, taken: list[tuple[PrefillJob, int]]) -> None:
        for job, n in taken:
            self.advance(job, n)
        self._step()

    def advance(self, job: PrefillJob, n: int) -> None:
        """``n`` more of ``job``'s tokens computed; at its last, the first token is out."""
        job.remaining -= n
        job.context += n
        if job.remaining > 0:
            return
        self.queue.remove(job)
        keys = job.request.keys
        self.cache.insert(keys)
        if self.store is not None and len(keys) > job.store_chunks:
            self.store.put(self.store_node_id, keys[job.store_chunks :])
        self.on_prefilled(job, self.loop.now)
