"""The decode worker: takes prefilled requests (KV included) and streams their tokens.

A ``DecodeTask`` arrives from a prefill worker with the prompt's KV; the request joins the
continuous batch as soon as pages allow, and every step's new tokens go to the router as
``TokenEvent``s. With a store node of its own, a finished request's full chunks past its prompt
(the prompt's were written by the prefill worker) go to that node: the next turn of a
conversation, whose prompt holds this answer, finds them there. In colocated mode the same worker
also takes ``GenerateTask``s and prefills them itself (local prefix cache only): the baseline
disaggregation is measured against.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from engine import SamplingParams
from engine.llm_engine import LLMEngine
from engine.sequence import Sequence
from kvstore.tensors import nbytes, to_tensor
from kvstore.workers import WorkerCounters, WorkerInfo
from kvstore.workers_loop import put_chunks
from transfer.channel import OutboxPool
from transfer.errors import TransferError
from transfer.messages import (
    BAD_REQUEST,
    AbortTask,
    DecodeTask,
    GenerateTask,
    Message,
    RequestFailed,
    TokenEvent,
)

log = logging.getLogger("tandem.decode")

ABORT_MEMORY_S = 60.0


@dataclass
class _Stream:
    reply_to: str
    report_hits: bool  # colocated: the first event carries the prompt's cache hits


class DecodeWorker:
    def __init__(self, engine: LLMEngine, info: WorkerInfo, store=None) -> None:
        if store is not None and info.chunk_tokens % engine.pool.page_size:
            raise ValueError(
                f"chunk_tokens {info.chunk_tokens} must be a multiple of page_size {engine.pool.page_size}"
            )
        self.engine = engine
        self.info = info
        self.store = store  # kvstore.StoreClient bound to this worker's node, or None: no write-back
        self.colocated = info.role == "colocated"
        self.outboxes = OutboxPool()
        self.counters = WorkerCounters()
        self._streams: dict[str, _Stream] = {}
        # An abort can overtake the hand-off it cancels (router → decode is faster than prefill →
        # decode): remember it for a while and drop the KV when it arrives.
        self._aborted: dict[str, float] = {}

    def handle(self, message: Message) -> None:
        if isinstance(message, DecodeTask):
            if self._aborted.pop(message.request_id, None) is not None:
                log.info(
                    "dropping the KV of request %s: it was aborted before it arrived", message.request_id
                )
                return
            self._admit(message, message.request_id, message.reply_to)
        elif isinstance(message, GenerateTask):
            if not self.colocated or message.decode_address is not None:
                self._fail(
                    message.reply_to, message.request_id, BAD_REQUEST, "this decode worker takes no prompts"
                )
                return
            self._admit(message, message.request_id, message.reply_to)
        elif isinstance(message, AbortTask):
            if self._streams.pop(message.request_id, None) is not None:
                self._abort(message.request_id)
            else:
                now = time.monotonic()
                self._aborted = {r: t for r, t in self._aborted.items() if now - t < ABORT_MEMORY_S}
                self._aborted[message.request_id] = now
        else:
            log.warning("decode worker ignores a %s message", message.KIND)

    def _admit(self, task: DecodeTask | GenerateTask, request_id: str, reply_to: str) -> None:
        try:
            params = SamplingParams(**task.sampling)
            if isinstance(task, DecodeTask):
                started = time.perf_counter()
                kv = to_tensor(task.buffers[0])
                self.engine.add_prefilled(
                    list(task.token_ids), task.first_token, params, kv, request_id,
                    hold_pages=self.store is not None,
                )  # fmt: skip
                self.counters.transferred("kv_recv", nbytes([kv]), time.perf_counter() - started)
            else:
                self.engine.add_request(list(task.token_ids), params, request_id=request_id)
        except (TypeError, ValueError) as e:
            self._fail(reply_to, request_id, BAD_REQUEST, str(e))
            return
        self._streams[request_id] = _Stream(reply_to, report_hits=isinstance(task, GenerateTask))

    def step(self) -> None:
        result = self.engine.step()
        finished = {id(s) for s in result.finished}
        for seq in result.sampled:
            stream = self._streams.get(seq.request_id)
            if stream is None:
                continue
            self._emit(seq, stream, done=id(seq) in finished)
        for seq in result.finished:
            self._streams.pop(seq.request_id, None)
            if seq.block_table:  # held for the write-back
                try:
                    self._write_back(seq)
                finally:
                    self.engine.release(seq)

    def _write_back(self, seq: Sequence) -> None:
        """Put the full chunks past the prompt's to this worker's store node."""
        ct = self.info.chunk_tokens
        first = seq.num_prompt_tokens // ct  # the prompt's full chunks are the prefill worker's
        keys, chunks = self.engine.pack_chunks(seq, seq.num_computed_tokens, ct, first)
        if keys:
            put_chunks(self.store, self.counters, seq.request_id, keys, chunks)

    def _abort(self, request_id: str) -> None:
        seq = self.engine.abort(request_id)
        if seq is not None and seq.block_table:
            self.engine.release(seq)

    def _emit(self, seq: Sequence, stream: _Stream, done: bool) -> None:
        hits = 0
        if stream.report_hits:
            hits = seq.num_cached_tokens or 0
            self.counters.prefilled(seq.num_prompt_tokens, hits, 0)
            stream.report_hits = False
        event = TokenEvent(
            request_id=seq.request_id, worker_id=self.info.worker_id, token_ids=(seq.token_ids[-1],),
            finish_reason=seq.finish_reason if done else None, num_cached_local=hits,
        )  # fmt: skip
        try:
            self.outboxes.send(stream.reply_to, event)
        except TransferError as e:
            log.error("router at %s unreachable, dropping request %s: %s", stream.reply_to, seq.request_id, e)
            self._streams.pop(seq.request_id, None)
            self._abort(seq.request_id)

    def _fail(self, reply_to: str, request_id: str, code: str, text: str) -> None:
        log.info("request %s failed: %s", request_id, text)
        try:
            self.outboxes.send(reply_to, RequestFailed(request_id, self.info.worker_id, code, text))
        except TransferError as e:
            log.error("router at %s unreachable: %s", reply_to, e)

    def report(self) -> dict[str, int | float]:
        """This worker's ``WorkerLoad`` fields: the engine's load and the worker's counters."""
        return {**self.engine.load_report(), **self.counters.fields()}

    def has_work(self) -> bool:
        return self.engine.has_unfinished()

    def close(self) -> None:
        self.outboxes.close()
