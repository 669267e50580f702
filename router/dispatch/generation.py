"""One request's trip through the workers: send the task, turn worker events into text deltas,
fail clearly, and abort on the workers whenever the router stops listening early.

Event order: the prefill worker's event (first token, cache hits) comes first. The decode worker
sends on another connection, so its events may overtake it; they wait here until it arrives.
Until then the request depends on both workers, afterwards on the decode worker only; if one it
depends on stops heartbeating, or no event arrives for ``timeout_s``, the request fails.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

from router.conductor.types import Route
from router.detokenizer import Decoder, TextStream
from router.dispatch import failures
from router.dispatch.dispatcher import Dispatcher, WorkerLost
from transfer.errors import PeerTimeout
from transfer.messages import BAD_REQUEST, GenerateTask, RequestFailed, Sampling, TokenEvent, TokenLogprob


@dataclass(frozen=True)
class Delta:
    """New output: ``text`` (maybe "" while a character or stop string is incomplete), the
    generated ``token_ids`` it came from (with their ``logprobs`` when asked), ``finish_reason``
    on the last one."""

    text: str
    token_ids: tuple[int, ...]
    finish_reason: str | None = None
    logprobs: tuple[TokenLogprob, ...] = ()

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)


class Generation:
    def __init__(
        self,
        dispatcher: Dispatcher,
        route: Route,
        request_id: str,
        token_ids: Sequence[int],
        sampling: Sampling,
        *,
        decoder: Decoder,
        stop: Sequence[str] = (),
        timeout_s: float,
        arrived_at: float | None = None,
        choice_ids: tuple[str, ...] = (),
    ) -> None:
        self.dispatcher = dispatcher
        self.route = route
        self.request_id = request_id
        self.token_ids = tuple(token_ids)
        self.sampling = sampling
        self.timeout_s = timeout_s
        self.choice_ids = choice_ids  # the other choices this task prefills for (sampling.n > 1)
        self.text = TextStream(decoder, stop)
        self.num_cached_local = 0
        self.num_cached_store = 0
        self.num_output_tokens = 0
        self.prompt_logprobs: tuple[TokenLogprob, ...] = ()  # the prefill worker's, when asked
        self.finish_reason: str | None = None
        self.started_at = arrived_at if arrived_at is not None else time.monotonic()  # TTFT counts from here
        self.first_token_at: float | None = None
        self.token_times: list[float] = []  # arrival of each event carrying tokens
        self._entry = None
        self._workers_done = False  # the workers finished on their own: no abort needed
        self._prefill_seen = False
        self.prefill_counted = False  # the router's metrics have this attempt's prefill
        self.finished = False  # the router's metrics have this attempt's outcome

    @property
    def prefill_id(self) -> str:
        return self.route.prefill.worker_id

    @property
    def decode_id(self) -> str:
        return self.route.decode_worker_id

    @property
    def _prefill_key(self) -> str:
        return self.route.prefill.worker.info.instance_key

    @property
    def _decode_key(self) -> str:
        decode = self.route.decode
        return decode.info.instance_key if decode is not None else self._prefill_key

    def listen(self) -> None:
        """Take this request's events from now on (a choice whose task another choice sends)."""
        self._entry = self.dispatcher.open(self.request_id, {self._prefill_key, self._decode_key})

    async def start(self) -> None:
        """Send the task to the prefill worker. Raises ``ApiError`` 503 if it accepts nothing (dead
        or stuck)."""
        self.listen()
        decode = self.route.decode
        task = GenerateTask(
            request_id=self.request_id,
            token_ids=self.token_ids,
            sampling=self.sampling,
            reply_to=self.dispatcher.reply_to,
            decode_address=decode.info.address if decode is not None else None,
            choice_ids=self.choice_ids,
        )
        try:
            await self.dispatcher.send_async(self.route.prefill.worker.info.address, task)
        except PeerTimeout as e:
            self.dispatcher.close(self.request_id)
            self._workers_done = True  # it never got the task
            raise failures.unreachable(self.prefill_id, e) from e

    async def deltas(self) -> AsyncIterator[Delta]:
        """The output, delta by delta, the last with ``finish_reason``. Raises ``ApiError`` when a
        worker fails the request, dies, or goes silent."""
        async for event in self._ordered_events():
            now = time.monotonic()
            if self.first_token_at is None:
                self.first_token_at = now
            if event.token_ids:
                self.token_times.append(now)
            self.num_output_tokens += len(event.token_ids)
            text = self.text.push(event.token_ids)
            if self.text.stopped:  # a stop string: the workers are still going, abort them on close
                self.finish_reason = "stop"
            elif event.finish_reason is not None:
                self._workers_done = True
                self.finish_reason = event.finish_reason
                text += self.text.finish()
            yield Delta(text, event.token_ids, self.finish_reason, event.logprobs)
            if self.finish_reason is not None:
                return

    async def _ordered_events(self) -> AsyncIterator[TokenEvent]:
        early: list[TokenEvent] = []  # decode events that overtook the prefill worker's
        while True:
            event = early.pop(0) if self._prefill_seen and early else await self._next_event()
            if not self._prefill_seen:
                if event.worker_id != self.prefill_id:
                    early.append(event)
                    continue
                self._prefill_seen = True
                self.num_cached_local = event.num_cached_local
                self.num_cached_store = event.num_cached_store
                self.prompt_logprobs = event.prompt_logprobs
            elif event.worker_id == self.decode_id:
                # the decode worker has the request: the prefill worker's fate no longer matters
                # (until now it did: dying before its hand-off left, it would leave the request hanging)
                self._entry.watched = {self._decode_key}
            yield event

    async def _next_event(self) -> TokenEvent:
        waiting_on = self.prefill_id if not self._prefill_seen else self.decode_id
        while True:
            try:
                event = await asyncio.wait_for(self._entry.queue.get(), self.timeout_s)
            except asyncio.TimeoutError:
                raise failures.silent(waiting_on, self.timeout_s) from None
            if not isinstance(event, WorkerLost):
                break
            if event.key in self._entry.watched:
                raise failures.lost(event.worker_id)
            # queued before the decode worker's first event was read: the prefill worker no longer
            # matters; a later loss is reported
            self._entry.lost = False
        if isinstance(event, RequestFailed):
            if event.code == BAD_REQUEST:  # the workers dropped it themselves
                self._workers_done = True
            raise failures.refused(event, self.decode_id)
        return event

    def close(self) -> None:
        """Stop listening; unless the workers finished, tell both to drop the request (in the
        background)."""
        self.dispatcher.close(self.request_id)
        if self._workers_done:
            return
        self._workers_done = True
        addresses = [self.route.prefill.worker.info.address]
        if self.route.decode is not None:
            addresses.append(self.route.decode.info.address)
        self.dispatcher.abort_soon(addresses, self.request_id)
