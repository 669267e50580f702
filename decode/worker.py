"""The decode worker: takes prefilled requests (KV included) and streams their tokens.

A ``DecodeTask`` arrives from a prefill worker with the prompt's KV; the request joins the
continuous batch as soon as pages allow, and every step's new tokens go to the router. With a
store node of its own, a finished request's full chunks past its prompt (the prompt's were written
by the prefill worker) go to that node: the next turn of a conversation, whose prompt holds this
answer, finds them there.
"""

from __future__ import annotations

import logging
import time

from engine.sequence import Sequence
from kvstore.tensors import nbytes, to_tensor
from transfer.messages import BAD_REQUEST, AbortTask, DecodeTask, HandoffChoice
from worker.base import sampling_params
from worker.streaming import StreamingWorker
from worker.types import MEMBERSHIP

log = logging.getLogger("tandem.decode")


class DecodeWorker(StreamingWorker, role="decode", writes="the chunks its requests generate"):
    """Run a decode worker: prefilled requests (with their KV) in, tokens streamed to the router;
    the chunks its answers complete are written to its store node."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        # An abort can overtake the hand-off it cancels (router → decode is faster than prefill →
        # decode): remember it for a while and drop the KV when it arrives.
        self._aborted: dict[str, float] = {}

    def handlers(self):
        return {DecodeTask: self._admit, AbortTask: self._abort}

    def _admit(self, task: DecodeTask) -> None:
        """Admit each choice the hand-off carries (``n`` > 1: several, sharing the prompt's pages)."""
        started = time.perf_counter()
        try:
            kv = to_tensor(task.buffers[0])
        except (TypeError, ValueError) as e:
            for choice in (HandoffChoice(task.request_id, task.first_token), *task.siblings):
                self.fail(task.reply_to, choice.request_id, BAD_REQUEST, str(e))
            return
        choices = zip(
            (HandoffChoice(task.request_id, task.first_token), *task.siblings),
            (task.index, *task.sibling_indices),
        )
        for choice, index in choices:
            if self._aborted.pop(choice.request_id, None) is not None:
                log.info("dropping the KV of request %s: it was aborted before it arrived", choice.request_id)
                continue
            try:
                self.engine.add_prefilled(
                    list(task.token_ids), choice.first_token, sampling_params(task.sampling.for_choice(index)), kv,
                    choice.request_id, hold_pages=self.store is not None,
                )  # fmt: skip
            except (TypeError, ValueError) as e:
                self.fail(task.reply_to, choice.request_id, BAD_REQUEST, str(e))
                continue
            self.open_stream(choice.request_id, task.reply_to, report_hits=False)
        self.counters.transferred("kv_recv", nbytes([kv]), time.perf_counter() - started)

    def _abort(self, message: AbortTask) -> None:
        if not self.close_stream(message.request_id):
            now = time.monotonic()
            memory_s = MEMBERSHIP.abort_memory_s
            self._aborted = {r: t for r, t in self._aborted.items() if now - t < memory_s}
            self._aborted[message.request_id] = now

    def finished(self, seq: Sequence) -> None:
        """Write the full chunks past the prompt's to this worker's store node."""
        if seq.block_table:  # held for the write-back
            first = seq.num_prompt_tokens // self.info.chunk_tokens  # the prompt's are the prefill worker's
            self.write_chunks(seq, seq.num_computed_tokens, first)
