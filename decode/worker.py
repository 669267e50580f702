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
from dataclasses import dataclass, field

import torch

from engine.sequence import Sequence
from engine.types import KVPages
from kvstore.tensors import nbytes, to_tensor
from transfer.channel import Damaged
from transfer.messages import BAD_REQUEST, UNAVAILABLE, AbortTask, DecodeTask, HandoffChoice, KVLayers
from worker.base import sampling_params
from worker.streaming import StreamingWorker
from worker.types import MEMBERSHIP

log = logging.getLogger("tandem.decode")


@dataclass
class _Landing:
    """A layer-wise hand-off in progress: its layers are written into ``pages`` as they land (or,
    when the pool was short at the first group, kept as tensors in ``groups`` until the task)."""

    since: float
    pages: list[int] | None
    groups: dict[int, torch.Tensor] = field(default_factory=dict)
    written: set[int] = field(default_factory=set)
    problems: list[str] = field(default_factory=list)


class DecodeWorker(StreamingWorker, role="decode", writes="the chunks its requests generate"):
    """Run a decode worker: prefilled requests (with their KV) in, tokens streamed to the router;
    the chunks its answers complete are written to its store node."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        # An abort can overtake the hand-off it cancels (router → decode is faster than prefill →
        # decode): remember it for a while and drop the KV when it arrives.
        self._aborted: dict[str, float] = {}
        self._landing: dict[str, _Landing] = {}  # layer-wise hand-offs in progress, by request id

    def handlers(self):
        return {DecodeTask: self._admit, AbortTask: self._abort, KVLayers: self._layers_arrived}

    def _layers_arrived(self, part: KVLayers) -> None:
        """A group of a prompt's KV layers, sent ahead of its ``DecodeTask``: written into pages
        reserved at the first group, so that only the last group's write is left when the task
        comes. Hand-offs whose task never comes (their prefill worker died) expire."""
        self._expire_landings()
        if part.request_id in self._aborted:
            return
        try:
            kv = to_tensor(part.buffers[0])
        except (TypeError, ValueError) as e:
            return self._problem(part.request_id, f"layers {part.first_layer}+ are not KV: {e}")
        if kv.dim() != 6 or not kv.shape[0]:
            shape = "[layers, 2, kv_heads, pages, page_size, head_dim]"
            return self._problem(
                part.request_id, f"layers {part.first_layer}+ are {list(kv.shape)}, not {shape}"
            )
        landing = self._landing.get(part.request_id)
        if landing is None:
            pages = self.engine.reserve_pages(kv.shape[3])  # None when short: kept as tensors instead
            landing = self._landing[part.request_id] = _Landing(time.monotonic(), pages)
        if landing.pages is None:
            landing.groups[part.first_layer] = kv  # a view of the frame, kept alive by it
        else:
            started = time.perf_counter()
            try:
                self.engine.write_layers(landing.pages, kv, part.first_layer)
            except ValueError as e:
                return self._problem(part.request_id, f"layers {part.first_layer}+: {e}")
            self.counters.transferred("kv_recv", nbytes([kv]), time.perf_counter() - started)
        landing.written.update(range(part.first_layer, part.first_layer + kv.shape[0]))

    def _problem(self, request_id: str, text: str) -> None:
        """A group that cannot be used: the request fails when its task comes, never runs."""
        landing = self._landing.setdefault(request_id, _Landing(time.monotonic(), None))
        landing.problems.append(text)

    def _damaged(self, damaged: Damaged) -> None:
        message = damaged.message
        if isinstance(message, KVLayers):
            return self._problem(
                message.request_id, f"layers {message.first_layer}+ arrived corrupted ({damaged.problem})"
            )
        super()._damaged(damaged)

    def _drop_landing(self, request_id: str) -> None:
        landing = self._landing.pop(request_id, None)
        if landing is not None and landing.pages is not None:
            self.engine.release_pages(landing.pages)

    def _expire_landings(self) -> None:
        now, keep_s = time.monotonic(), MEMBERSHIP.abort_memory_s
        for request_id in [r for r, landing in self._landing.items() if now - landing.since > keep_s]:
            self._drop_landing(request_id)
            log.warning(
                "dropping the KV layers sent ahead for request %s: its hand-off never came", request_id
            )

    def _streamed_kv(self, task: DecodeTask) -> KVPages | list[torch.Tensor]:
        """The KV a layer-wise hand-off sent ahead: the pages it was written into (the request
        takes them over), or its groups of layers in order; ``LookupError`` naming the layers
        that did not arrive or arrived damaged (its pages given back)."""
        landing = self._landing.pop(task.request_id, None) or _Landing(0.0, None)
        problems = list(landing.problems)
        missing = sorted(set(range(task.streamed_layers)) - landing.written)
        if missing and not problems:
            problems.append(f"layers {missing} of {task.streamed_layers} did not arrive")
        elif not problems and len(landing.written) != task.streamed_layers:
            problems.append(f"{len(landing.written)} layers arrived for a hand-off of {task.streamed_layers}")
        if problems:
            if landing.pages is not None:
                self.engine.release_pages(landing.pages)
            raise LookupError("; ".join(problems))
        if landing.pages is not None:
            return KVPages(landing.pages)
        return [landing.groups[first] for first in sorted(landing.groups)]

    def _admit(self, task: DecodeTask) -> None:
        """Admit each choice the hand-off carries (``n`` > 1: several, sharing the prompt's pages)."""
        started = time.perf_counter()
        self._expire_landings()
        choices = []
        for choice, index in zip(
            (HandoffChoice(task.request_id, task.first_token), *task.siblings),
            (task.index, *task.sibling_indices),
        ):
            if self._aborted.pop(choice.request_id, None) is not None:
                log.info("dropping the KV of request %s: it was aborted before it arrived", choice.request_id)
            else:
                choices.append((choice, index))
        if not choices or not task.streamed_layers:  # aborted, or the KV came whole after all
            self._drop_landing(task.request_id)
        if not choices:
            return
        if task.streamed_layers and len(choices) > 1:  # one request owns the pages written ahead
            self._drop_landing(task.request_id)
            for choice, _ in choices:
                self.fail(
                    task.reply_to, choice.request_id, BAD_REQUEST, "a layer-wise hand-off carries one choice"
                )
            return
        kv = self._handoff_kv(task, [c.request_id for c, _ in choices])
        if kv is None:
            return
        for choice, index in choices:
            try:
                self.engine.add_prefilled(
                    list(task.token_ids), choice.first_token, sampling_params(task.sampling.for_choice(index)), kv,
                    choice.request_id, hold_pages=self.store is not None,
                )  # fmt: skip
            except (TypeError, ValueError) as e:
                if isinstance(kv, KVPages):  # not taken by a sequence: give them back
                    self.engine.release_pages(kv.pages)
                self.fail(task.reply_to, choice.request_id, BAD_REQUEST, str(e))
                continue
            self.open_stream(choice.request_id, task.reply_to, report_hits=False)
        if not isinstance(kv, KVPages):  # layers written as they landed were counted then
            kv_bytes = nbytes(kv if isinstance(kv, list) else [kv])
            self.counters.transferred("kv_recv", kv_bytes, time.perf_counter() - started)

    def _handoff_kv(
        self, task: DecodeTask, ids: list[str]
    ) -> torch.Tensor | list[torch.Tensor] | KVPages | None:
        """The hand-off's KV: its buffer, or the layers sent ahead; None, with ``ids`` failed, if
        it cannot be had (lost layers: retryable, the router prefills the request again)."""
        try:
            return self._streamed_kv(task) if task.streamed_layers else to_tensor(task.buffers[0])
        except LookupError as e:
            code, text = UNAVAILABLE, f"the layer-wise hand-off lost KV: {e.args[0]}"
        except (TypeError, ValueError) as e:
            code, text = BAD_REQUEST, str(e)
        for request_id in ids:
            self.fail(task.reply_to, request_id, code, text)
        return None

    def _abort(self, message: AbortTask) -> None:
        self._drop_landing(message.request_id)
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
