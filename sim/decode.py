"""A decode instance in virtual time (and a colocated one: decode steps that also prefill).

Handed-off requests wait until a step boundary, then join the batch while there are slots
(``max_num_seqs``) and KV room (``cache_tokens_per_instance`` tokens of context in all). Every step
gives each running request one token and costs the profile's decode step time for the batch it
ran; a request's time between tokens is the mean step time over its tokens (vLLM's TPOT). A
colocated instance's step also spends what is left of the token budget on prompt chunks, and
costs both parts.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from router.conductor.profile import CostProfile
from sim.events import EventLoop
from sim.prefill import PrefillInstance, PrefillJob


@dataclass
class DecodeSeq:
    request_id: int
    context: int  # tokens held: prompt + generated
    remaining: int  # tokens still to generate
    joined_step: int = 0
    joined_time: float = 0.0


class DecodeInstance:
    def __init__(
        self, instance_id: str, profile: CostProfile, loop: EventLoop,
        on_finished: Callable[[DecodeSeq, float, float], None],
    ) -> None:  # fmt: skip
        self.instance_id = instance_id
        self.profile = profile
        self.loop = loop
        self.on_finished = on_finished  # (seq, finished at, mean step seconds)
        self.waiting: deque[DecodeSeq] = deque()
        self.running: dict[int, DecodeSeq] = {}
        self._finish_heap: list[tuple[int, int]] = []  # (step at which it finishes, request id)
        self.context_tokens = 0
        self.steps = 0
        self.elapsed_s = 0.0  # sum of step times (for each request's mean step time)
        self.last_step_s = 0.0
        self.busy = False

    @property
    def capacity_tokens(self) -> int:
        return self.profile.kv.cache_tokens_per_instance

    def submit(self, seq: DecodeSeq) -> None:
        self.waiting.append(seq)
        if not self.busy:
            self._step()

    def _admit(self) -> None:
        max_seqs = self.profile.decode.max_num_seqs
        while self.waiting and len(self.running) < max_seqs:
            seq = self.waiting[0]
            if self.running and self.context_tokens + seq.context + seq.remaining > self.capacity_tokens:
                break
            self.waiting.popleft()
            seq.joined_step, seq.joined_time = self.steps, self.elapsed_s
            self.running[seq.request_id] = seq
            self.context_tokens += seq.context
            heapq.heappush(self._finish_heap, (self.steps + seq.remaining, seq.request_id))

    def step_work(self) -> float:
        """Seconds of extra work this step does besides decoding (a colocated prefill chunk)."""
        return 0.0

    def _step(self) -> None:
        self._admit()
        extra_s = self.step_work()
        if not self.running and not extra_s:
            self.busy = False
            return
        self.busy = True
        decode_s = self.profile.decode_step_s(len(self.running), self.context_tokens) if self.running else 0.0
        self.last_step_s = decode_s + extra_s
        self.loop.after(self.last_step_s, self._finish_step)

    def _finish_step(self) -> None:
        self.steps += 1
        self.elapsed_s += self.last_step_s
        self.context_tokens += len(self.running)
        self.finish_extra()
        heap = self._finish_heap
        while heap and heap[0][0] <= self.steps:
            _, request_id = heapq.heappop(heap)
            seq = self.running.pop(request_id)
            generated = self.steps - seq.joined_step
            self.context_tokens -= seq.context + generated
            self.on_finished(seq, self.loop.now, (self.elapsed_s - seq.joined_time) / max(1, generated))
        self._step()

    def finish_extra(self) -> None:
        """Complete the extra work ``step_work`` planned (colocated)."""


class ColocatedInstance(DecodeInstance):
    """Decodes and prefills in the same steps; its prefill half has a local cache, no store."""

    def __init__(
        self, instance_id: str, profile: CostProfile, loop: EventLoop, on_finished, on_prefilled
    ) -> None:
        super().__init__(instance_id, profile, loop, on_finished)
        # the prefill half steps inside this instance's steps: a prompt wakes this instance
        self.prefill = PrefillInstance(instance_id, profile, loop, None, "", on_prefilled, wake=self._wake)
        self._taken: list[tuple[PrefillJob, int]] = []

    def _wake(self) -> None:
        if not self.busy:
            self._step()

    def step_work(self) -> float:
        budget = self.profile.prefill.max_batched_tokens - len(self.running)
        self._taken, tokens, products, fetch_s = self.prefill.plan_step(max(0, budget))
        if not tokens:
            return 0.0
        return self.profile.prefill_step_s(tokens, products) + fetch_s

    def finish_extra(self) -> None:
        taken, self._taken = self._taken, []
        for job, n in taken:
            self.prefill.advance(job, n)
