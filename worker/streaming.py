"""A worker that streams tokens to the router: the decode and colocated roles.

Every step's new tokens go to the router as ``TokenEvent``s, one per sequence. A request whose
first event must carry its prompt's cache hits (it was prefilled here) says so when it opens its
stream. A router that cannot be reached loses its request here too (aborted, pages freed).
Finished sequences pass through ``finished`` (the role's hook, e.g. a write-back) before their
pages are released.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from engine.sequence import Sequence
from transfer.messages import AbortTask, TokenEvent
from worker.base import BaseWorker, wire_logprobs

log = logging.getLogger("tandem.worker")


@dataclass
class Stream:
    reply_to: str
    report_hits: bool  # the first event carries the prompt's cache hits (prefilled on this worker)
    first: bool = True  # no event sent yet: the next carries the prompt's logprobs, if asked


class StreamingWorker(BaseWorker):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._streams: dict[str, Stream] = {}

    def open_stream(self, request_id: str, reply_to: str, *, report_hits: bool) -> None:
        self._streams[request_id] = Stream(reply_to, report_hits)

    def close_stream(self, request_id: str) -> bool:
        """Stop streaming a request and drop it with its pages; False if it was not streaming."""
        if self._streams.pop(request_id, None) is None:
            return False
        self.drop(request_id)
        return True

    def abort(self, message: AbortTask) -> None:
        self.close_stream(message.request_id)

    def held(self) -> dict[str, str]:
        return {request_id: stream.reply_to for request_id, stream in self._streams.items()}

    def step(self) -> None:
        result = self.engine.step()
        finished = {id(s) for s in result.finished}
        for seq in result.sampled:
            stream = self._streams.get(seq.request_id)
            if stream is not None:
                self._emit(seq, stream, done=id(seq) in finished)
        for seq in result.finished:
            self._streams.pop(seq.request_id, None)
            try:
                self.finished(seq)
            finally:
                self.release(seq)

    def finished(self, seq: Sequence) -> None:
        """What the role does with a finished sequence before its pages are released."""

    def _emit(self, seq: Sequence, stream: Stream, done: bool) -> None:
        hits, prompt_logprobs = 0, ()
        if stream.report_hits:
            hits = seq.num_cached_tokens or 0
            self.counters.prefilled(seq.num_prompt_tokens, hits, 0)
            stream.report_hits = False
        if stream.first:
            prompt_logprobs = wire_logprobs(seq.prompt_logprobs or [])
            stream.first = False
        event = TokenEvent(
            request_id=seq.request_id, worker_id=self.info.worker_id, token_ids=(seq.token_ids[-1],),
            finish_reason=seq.finish_reason if done else None, num_cached_local=hits,
            logprobs=wire_logprobs(seq.logprobs[-1:]) if seq.logprobs else (),
            prompt_logprobs=prompt_logprobs,
        )  # fmt: skip
        self.send(stream.reply_to, event, lambda _: self._unreachable(seq.request_id))

    def _unreachable(self, request_id: str) -> None:
        if self.close_stream(request_id):
            log.error("dropped request %s: its router is unreachable", request_id)
