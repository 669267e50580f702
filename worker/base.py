"""What every worker does the same way, whatever its role.

A worker owns an engine, an optional store client bound to its own store node, outboxes to the
router and its peers, and its counters. Subclasses name the messages they take
(``handlers``) and what a step does (``step``); this class routes messages, turns a wire
``Sampling`` into engine ``SamplingParams``, fails requests back to the router, drops requests
with their pages, writes chunks to the store, and reports load.

A message a role does not take is refused: a prompt (``GenerateTask``) gets a ``RequestFailed``
so the router is not left waiting, anything else is logged and dropped.

A draining worker (``start_drain``: it is shutting down) refuses new prompts with ``DRAINING``,
so the router routes them again elsewhere, and keeps serving what it holds (``held``); past its
grace period it fails those too (``abandon``).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from typing import Any, ClassVar

from engine.llm_engine import LLMEngine
from engine.sequence import Sequence
from engine.types import EngineLoad, SamplingParams, TokenLogprobs
from transfer.channel import Damaged, OutboxPool
from transfer.messages import (
    BAD_REQUEST,
    DRAINING,
    UNAVAILABLE,
    AbortTask,
    GenerateTask,
    Message,
    RequestFailed,
    Sampling,
    TokenLogprob,
)
from worker.counters import WorkerCounters
from worker.types import ROLES, WorkerInfo, WorkerLoad, WorkerTotals
from worker.writeback import ChunkWriter

log = logging.getLogger("tandem.worker")


DEFAULT_HANDOFF_LAYERS = 4  # layers per KVLayers message of a prefill worker (0: the KV whole)


def load_report(engine: EngineLoad, totals: WorkerTotals, draining: bool = False) -> WorkerLoad:
    """What a worker publishes: its engine's load and its totals, field by field, and whether it
    is draining."""
    return WorkerLoad(**dataclasses.asdict(engine), **dataclasses.asdict(totals), draining=draining)


def sampling_params(sampling: Sampling) -> SamplingParams:
    """The engine's parameters for one choice's wire ``Sampling`` (``ValueError`` if invalid;
    ``n`` is the worker's business: see ``choice_params``)."""
    fields = {f.name: getattr(sampling, f.name) for f in dataclasses.fields(sampling) if f.name != "n"}
    fields["logit_bias"] = tuple((b.token_id, b.bias) for b in sampling.logit_bias)
    return SamplingParams(**fields)


def choice_params(task: GenerateTask) -> tuple[SamplingParams, list[tuple[str, SamplingParams]]]:
    """A task's first choice's parameters, and each other choice's request id and parameters."""
    siblings = [
        (cid, sampling_params(task.sampling.for_choice(i + 1))) for i, cid in enumerate(task.choice_ids)
    ]
    return sampling_params(task.sampling.for_choice(0)), siblings


def task_ids(task: GenerateTask) -> tuple[str, ...]:
    """Every request id a task answers for: its own, and its other choices' (``n`` > 1)."""
    return (task.request_id, *task.choice_ids)


def wire_logprobs(logprobs: list[TokenLogprobs | None]) -> tuple[TokenLogprob, ...]:
    """The engine's logprobs as they travel (an entry the engine has none for is skipped: only the
    prompt's first token has none, and the wire's prompt logprobs start after it)."""
    return tuple(
        TokenLogprob(lp.token_id, lp.logprob, tuple(lp.top), tuple(lp.top.values()))
        for lp in logprobs
        if lp is not None
    )


class BaseWorker:
    """A role is a subclass naming itself: ``class DecodeWorker(StreamingWorker, role="decode",
    writes="...")``, whose docstring is what ``tandem serve <role> --help`` says it does and
    ``writes`` what it writes to a store node of its own (None: it takes no store)."""

    ROLE: ClassVar[str]
    WRITES: ClassVar[str | None]

    def __init_subclass__(cls, *, role: str | None = None, writes: str | None = None, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        if role is not None:
            if role not in ROLES:
                raise ValueError(f"role must be one of {ROLES}, got {role!r}")
            cls.ROLE, cls.WRITES = role, writes

    def __init__(self, engine: LLMEngine, info: WorkerInfo, store=None) -> None:
        if store is not None and info.chunk_tokens % engine.pool.page_size:
            raise ValueError(
                f"chunk_tokens {info.chunk_tokens} must be a multiple of page_size {engine.pool.page_size}"
            )
        self.engine = engine
        self.info = info
        self.store = store  # kvstore.StoreClient bound to this worker's node, or None
        self.outboxes = OutboxPool()
        self.counters = WorkerCounters()
        # its own client: a write in flight never holds up this worker's fetches
        self.writer = ChunkWriter(store.clone(), self.counters) if store is not None else None
        self.draining = False  # shutting down: no new prompts (see start_drain)

    # -- what a role defines ------------------------------------------------------------------

    def handlers(self) -> dict[type[Message], Callable[[Message], None]]:
        """The messages this role takes, each with what to do with it."""
        raise NotImplementedError

    def step(self) -> None:
        raise NotImplementedError

    # -- the loop's side (worker.loop) ----------------------------------------------------------

    def handle(self, message: Message | Damaged) -> None:
        if isinstance(message, Damaged):
            self._damaged(message)
            return
        if self.draining and isinstance(message, GenerateTask):
            text = f"worker {self.info.worker_id} is draining (shutting down) and takes no new prompts; retry"
            for request_id in task_ids(message):
                self.fail(message.reply_to, request_id, DRAINING, text)
            return
        handler = self.handlers().get(type(message))
        if handler is not None:
            handler(message)
        elif isinstance(message, GenerateTask):
            for request_id in task_ids(message):
                self.fail(
                    message.reply_to,
                    request_id,
                    BAD_REQUEST,
                    f"this {self.info.role} worker takes no prompts",
                )
        else:
            log.warning("%s worker ignores a %s message", self.info.role, message.KIND)

    def _damaged(self, damaged: Damaged) -> None:
        """A message whose bytes were corrupted on their way: its requests fail, never run on them
        (a hand-off's ``UNAVAILABLE``: the router prefills it again, elsewhere if it can)."""
        message = damaged.message
        reply_to = getattr(message, "reply_to", None)
        if reply_to is None:
            return
        ids = [message.request_id, *(c.request_id for c in getattr(message, "siblings", ()))]
        for request_id in ids:
            self.fail(reply_to, request_id, UNAVAILABLE, f"its KV arrived corrupted ({damaged.problem})")

    def report(self) -> WorkerLoad:
        """This worker's load: its engine's and its own counters."""
        return load_report(self.engine.load(), self.counters.totals(), self.draining)

    def has_work(self) -> bool:
        return self.engine.has_unfinished()

    def configure(self, args: Any) -> None:
        """Take this role's own flags from the parsed command line (``worker.cli``); none here."""

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.outboxes.close()

    # -- draining (worker.drain) -----------------------------------------------------------------

    def held(self) -> dict[str, str]:
        """Every request this worker holds (accepted, not finished): request id -> its router's
        address. A role that holds requests says which."""
        return {}

    def start_drain(self) -> int:
        """Refuse new prompts from now on (``DRAINING``) and report ``draining``; hand-offs
        (``DecodeTask``) are still taken. Returns how many requests it holds."""
        self.draining = True
        return len(self.held())

    def abandon(self, text: str) -> int:
        """Fail every request held (``DRAINING``: the router may route it again) and drop it
        with its pages, through the role's own abort. Returns how many there were."""
        held = self.held()
        for request_id, reply_to in held.items():
            self.fail(reply_to, request_id, DRAINING, text)
            self.handle(AbortTask(request_id))
        return len(held)

    # -- helpers for the roles -------------------------------------------------------------------

    def send(self, address: str, message: Message, on_drop: Callable[[str], None] | None = None) -> None:
        """Send ``message`` without waiting (see ``transfer.channel.OutboxPool``); if ``address``
        does not take it in time, it is dropped: logged, and ``on_drop(reason)`` called."""

        def dropped(reason: str) -> None:
            log.error("could not send a %s to %s: %s", message.KIND, address, reason)
            if on_drop is not None:
                on_drop(reason)

        self.outboxes.send(address, message, dropped)

    def flush(self) -> int:
        """Send the messages that wait for their peers; how many still wait (draining, the chunks
        the store writer has not written yet count too: the worker waits for them before it exits)."""
        unwritten = self.writer.pending if self.draining and self.writer is not None else 0
        return self.outboxes.flush() + unwritten

    def fail(self, reply_to: str, request_id: str, code: str, text: str) -> None:
        """Tell the router the request cannot complete (``code``: a ``transfer.messages`` code)."""
        log.info("request %s failed: %s", request_id, text)
        self.send(reply_to, RequestFailed(request_id, self.info.worker_id, code, text))

    def drop(self, request_id: str) -> None:
        """Abort a request in the engine and free its pages, wherever it is."""
        seq = self.engine.abort(request_id)
        if seq is not None:
            self.release(seq)

    def release(self, seq: Sequence) -> None:
        """Free a finished sequence's pages if the engine held them for us."""
        if seq.block_table:
            self.engine.release(seq)

    def write_chunks(self, seq: Sequence, num_tokens: int, first_chunk: int) -> None:
        """Write ``seq``'s full chunks from ``first_chunk`` up to ``num_tokens`` tokens to this
        worker's store node, off the loop (``worker.writeback``): they are packed (copied) here,
        so the pages may be released at once. Store trouble is logged, never the request's
        failure: the chunks are a cache."""
        if self.writer is None:
            return
        keys, chunks = self.engine.pack_chunks(seq, num_tokens, self.info.chunk_tokens, first_chunk)
        if keys and not self.writer.submit(seq.request_id, keys, chunks):
            log.warning(
                "request %s: the store writer is behind; %d chunks not cached", seq.request_id, len(keys)
            )
