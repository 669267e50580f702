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

import torch

from engine.sequence import Sequence
from kvstore.tensors import nbytes, to_tensor
from transfer.channel import Damaged
from transfer.messages import BAD_REQUEST, UNAVAILABLE, AbortTask, DecodeTask, HandoffChoice, KVLayers
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
        # Layer-wise hand-offs in progress: request id -> (when its first group came, first layer
        # -> that group's KV, or the problem it arrived with).
        self._layers: dict[str, tuple[float, dict[int, torch.Tensor | str]]] = {}

    def handlers(self):
        return {DecodeTask: self._admit, AbortTask: self._abort, KVLayers: self._layers_arrived}

    def _layers_arrived(self, part: KVLayers) -> None:
        """A group of a prompt's KV layers, sent ahead of its ``DecodeTask``: kept until it comes.
        Groups whose task never comes (its prefill worker died) are dropped after a while."""
        self._expire_layers()
        if part.request_id in self._aborted:
            return
        try:
            kv: torch.Tensor | str = to_tensor(part.buffers[0])  # a view of the frame, kept alive by it
        except (TypeError, ValueError) as e:
            kv = f"layers {part.first_layer}+ are not KV: {e}"
        if isinstance(kv, torch.Tensor) and (kv.dim() != 6 or not kv.shape[0]):
            kv = f"layers {part.first_layer}+ are {list(kv.shape)}, not [layers, 2, kv_heads, pages, page_size, head_dim]"
        self._layers.setdefault(part.request_id, (time.monotonic(), {}))[1][part.first_layer] = kv

    def _damaged(self, damaged: Damaged) -> None:
        message = damaged.message
        if isinstance(message, KVLayers):  # its task fails when it comes, never runs on these bytes
            entry = self._layers.setdefault(message.request_id, (time.monotonic(), {}))
            entry[1][message.first_layer] = (
                f"layers {message.first_layer}+ arrived corrupted ({damaged.problem})"
            )
            return
        super()._damaged(damaged)

    def _expire_layers(self) -> None:
        now, keep_s = time.monotonic(), MEMBERSHIP.abort_memory_s
        for request_id in [r for r, (t, _) in self._layers.items() if now - t > keep_s]:
            del self._layers[request_id]
            log.warning(
                "dropping the KV layers sent ahead for request %s: its hand-off never came", request_id
            )

    def _streamed_kv(self, task: DecodeTask) -> list[torch.Tensor]:
        """The KV a layer-wise hand-off sent ahead, its groups of layers in order (no copy);
        ``LookupError`` naming the layers that did not arrive or arrived damaged."""
        _, groups = self._layers.pop(task.request_id, (0.0, {}))
        damaged = [g for g in groups.values() if isinstance(g, str)]
        if damaged:
            raise LookupError("; ".join(damaged))
        kv = dict(sorted(groups.items()))
        held = [layer for first, g in kv.items() for layer in range(first, first + g.shape[0])]
        missing = sorted(set(range(task.streamed_layers)) - set(held))
        if missing:
            raise LookupError(f"layers {missing} of {task.streamed_layers} did not arrive")
        if held != list(range(task.streamed_layers)):
            raise LookupError(f"the layers sent ahead were {held}, for a hand-off of {task.streamed_layers}")
        return list(kv.values())  # the engine checks each group and writes it to its layers

    def _admit(self, task: DecodeTask) -> None:
        """Admit each choice the hand-off carries (``n`` > 1: several, sharing the prompt's pages)."""
        started = time.perf_counter()
        self._expire_layers()
        choices = []
        for choice, index in zip(
            (HandoffChoice(task.request_id, task.first_token), *task.siblings),
            (task.index, *task.sibling_indices),
        ):
            if self._aborted.pop(choice.request_id, None) is not None:
                log.info("dropping the KV of request %s: it was aborted before it arrived", choice.request_id)
            else:
                choices.append((choice, index))
        kv = self._handoff_kv(task, [c.request_id for c, _ in choices]) if choices else None
        self._layers.pop(task.request_id, None)
        if kv is None:
            return
        for choice, index in choices:
            try:
                self.engine.add_prefilled(
                    list(task.token_ids), choice.first_token, sampling_params(task.sampling.for_choice(index)), kv,
                    choice.request_id, hold_pages=self.store is not None,
                )  # fmt: skip
            except (TypeError, ValueError) as e:
                self.fail(task.reply_to, choice.request_id, BAD_REQUEST, str(e))
                continue
            self.open_stream(choice.request_id, task.reply_to, report_hits=False)
        self.counters.transferred(
            "kv_recv", nbytes(kv if isinstance(kv, list) else [kv]), time.perf_counter() - started
        )

    def _handoff_kv(self, task: DecodeTask, ids: list[str]) -> torch.Tensor | list[torch.Tensor] | None:
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
        self._layers.pop(message.request_id, None)
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
