"""Continuous batching with chunked prefill, FCFS, and preemption by recompute.

Each step spends a token budget (``max_num_batched_tokens``). Running sequences go first, in
arrival order: a decoding sequence needs one token, a sequence mid-prefill gets the next chunk of
its prompt. What is left of the budget admits waiting sequences, oldest first, each starting after
its longest cached prefix. When pages run out, the youngest running sequence is preempted: its
pages are freed and it goes back to the head of the queue to be recomputed later, so the engine
never fails for lack of pages (a single request that cannot fit at all is refused at submission).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from engine.kv_cache_manager import KVCacheManager
from engine.sequence import Sequence, Status


@dataclass
class ScheduledBatch:
    """Sequences of one step and how many tokens each runs; decodes (one token) come first."""

    seqs: list[Sequence] = field(default_factory=list)
    num_new_tokens: list[int] = field(default_factory=list)
    num_preempted: int = 0

    @property
    def num_tokens(self) -> int:
        return sum(self.num_new_tokens)

    def __bool__(self) -> bool:
        return bool(self.seqs)


class Scheduler:
    def __init__(self, kv: KVCacheManager, max_num_seqs: int, max_num_batched_tokens: int) -> None:
        self.kv = kv
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.num_preemptions = 0

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    def schedule(self) -> ScheduledBatch:
        """One step's work: running sequences first (preempting the youngest when pages run out),
        then waiting ones while budget, batch slots and pages allow; decodes lead the batch."""
        budget = self.max_num_batched_tokens
        picked, preempted, budget = self._schedule_running(budget)
        # Admission only when nothing was preempted: a preempted sequence outranks the waiting ones
        # and is already at the head of the queue.
        if not preempted:
            picked += self._admit_waiting(budget)
        picked.sort(key=lambda p: p[1] != 1)  # decodes first, stable otherwise
        batch = ScheduledBatch(num_preempted=preempted)
        for seq, n in picked:
            batch.seqs.append(seq)
            batch.num_new_tokens.append(n)
        return batch

    def _schedule_running(self, budget: int) -> tuple[list[tuple[Sequence, int]], int, int]:
        """``(picked, num_preempted, budget left)`` over the running sequences, oldest first."""
        picked: list[tuple[Sequence, int]] = []
        preempted = 0
        i = 0
        while i < len(self.running) and budget > 0:
            seq = self.running[i]
            n = min(seq.num_uncomputed_tokens, budget)
            while not self.kv.grow(seq, n):
                victim = self.running.pop()
                self._preempt(victim)
                preempted += 1
                if victim is seq:
                    break
            else:
                picked.append((seq, n))
                budget -= n
                i += 1
        return picked, preempted, budget

    def _admit_waiting(self, budget: int) -> list[tuple[Sequence, int]]:
        """Move waiting sequences to running, FCFS, while the budget, slots and pages allow."""
        picked: list[tuple[Sequence, int]] = []
        while self.waiting and budget > 0 and len(self.running) < self.max_num_seqs:
            seq = self.waiting[0]
            if seq.pending_kv is not None:
                n = seq.num_tokens - seq.num_prompt_tokens  # the token prefill sampled
                if not self.kv.admit_prefilled(seq):
                    break
            else:
                cached = self.kv.match_prefix(seq)
                n = min(seq.num_tokens - len(cached) * self.kv.page_size, budget)
                if not self.kv.admit(seq, cached, n):
                    break
            if seq.num_cached_tokens is None:
                seq.num_cached_tokens = seq.num_computed_tokens
            self.waiting.popleft()
            seq.status = Status.RUNNING
            self.running.append(seq)
            picked.append((seq, n))
            budget -= n
        return picked

    def finish(self, seq: Sequence, reason: str) -> None:
        """Retire a running sequence. One that holds its pages (prefill-only ones do) keeps them
        for export: the caller releases them with ``kv.free``."""
        seq.status = Status.FINISHED
        seq.finish_reason = reason
        if not seq.hold_pages:
            self.kv.free(seq)
        self.running.remove(seq)

    def abort(self, request_id: str) -> Sequence | None:
        """Drop a request wherever it is, freeing its pages; None if it is unknown."""
        for seq in self.running:
            if seq.request_id == request_id:
                self.finish(seq, "abort")
                return seq
        for seq in self.waiting:
            if seq.request_id == request_id:
                self.waiting.remove(seq)
                seq.status = Status.FINISHED
                seq.finish_reason = "abort"
                return seq
        return None

    def _preempt(self, seq: Sequence) -> None:
        self.kv.free(seq)
        seq.status = Status.WAITING
        self.waiting.appendleft(seq)
        self.num_preemptions += 1
