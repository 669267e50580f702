"""The prefill worker: prompts in, first token and KV out.

For each ``GenerateTask``: reuse the pages it already holds, fetch the longest prefix cached on
another store node into its pages (a fetch over loopback or the network is far cheaper than
recomputing), prefill the rest in chunks (continuous batching with other prompts), sample the
first token, write the prompt's new full chunks to its own store node, and hand the prompt's KV
(the last partial page included) to the chosen decode worker. The router hears the first token
from here, the rest from the decode worker.
"""

from __future__ import annotations

import logging
import time

from engine.sequence import Sequence
from kvstore.keys import chain_keys
from kvstore.tensors import nbytes, to_buffer
from kvstore.types import StoreError
from transfer.errors import CorruptBuffer, TransferError
from transfer.messages import (
    BAD_REQUEST,
    UNAVAILABLE,
    AbortTask,
    DecodeTask,
    GenerateTask,
    HandoffChoice,
    KVLayers,
    TokenEvent,
)
from worker.base import DEFAULT_HANDOFF_LAYERS, BaseWorker, choice_params, task_ids, wire_logprobs

log = logging.getLogger("tandem.prefill")


class PrefillWorker(BaseWorker, role="prefill", writes="its prompts' chunks"):
    """Run a prefill worker: prompts in, first token out, KV handed to decode workers and written
    to the KV store."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._tasks: dict[str, GenerateTask] = {}
        self._store_hits: dict[str, int] = {}  # tokens fetched from the store, per request
        self._stored_chunks: dict[str, int] = {}  # leading chunks already in the store, per request
        self.handoff_layers = DEFAULT_HANDOFF_LAYERS  # 0: hand the KV off whole after the forward
        self._streamed: dict[str, int] = {}  # layers of a prompt's KV sent ahead (-1: one was lost)

    def configure(self, args) -> None:
        if args.handoff_layers < 0:
            raise ValueError(f"--handoff-layers must be >= 0, got {args.handoff_layers}")
        self.handoff_layers = args.handoff_layers

    def handlers(self):
        return {GenerateTask: self._start, AbortTask: self._abort}

    def _abort(self, message: AbortTask) -> None:
        self._streamed.pop(message.request_id, None)
        if self._tasks.pop(message.request_id, None) is not None:
            self.drop(message.request_id)
        else:  # another choice of a prompt being prefilled: it is no longer wanted
            self.engine.abort(message.request_id)

    def held(self) -> dict[str, str]:
        return {request_id: task.reply_to for request_id, task in self._tasks.items()}

    def _start(self, task: GenerateTask) -> None:
        try:
            params, siblings = choice_params(task)
            prompt = list(task.token_ids)
            for p in (params, *(p for _, p in siblings)):
                self.engine.validate(prompt, p)
        except (TypeError, ValueError) as e:
            for request_id in task_ids(task):
                self.fail(task.reply_to, request_id, BAD_REQUEST, str(e))
            return
        self._store_hits[task.request_id] = self._fetch_prefix(task.request_id, prompt)
        self.engine.add_request(
            prompt, params, request_id=task.request_id, prefill_only=True, siblings=siblings
        )
        self._tasks[task.request_id] = task

    def _fetch_prefix(self, request_id: str, prompt: list[int]) -> int:
        """Import the longest prefix some store node holds beyond what this engine has; returns the
        tokens that came from the store. Store trouble is logged and means recompute, never failure."""
        self._stored_chunks[request_id] = 0
        if self.store is None:
            return 0
        ct = self.info.chunk_tokens
        keys = chain_keys(prompt[:-1], ct, self.engine.fingerprint)  # the last token is always run
        if not keys:
            return 0
        local = self.engine.cached_prefix_tokens(prompt[:-1]) // ct
        try:
            best = self.store.match(keys).anywhere  # the chunks may sit on several nodes
            self._stored_chunks[request_id] = best
            if best <= local:
                return 0
            started = time.perf_counter()
            chunks = self.store.get(keys[local:best])
        except CorruptBuffer as e:  # changed since it was put
            return self._distrust(request_id, keys[local:best], local, f"are corrupt ({e})")
        except (StoreError, KeyError, TransferError, ValueError) as e:
            log.warning("request %s: store fetch failed, recomputing: %s", request_id, e)
            return 0
        try:
            imported = self.engine.import_prefix(prompt, chunks, start_token=local * ct)
        except ValueError as e:  # not KV this engine can use
            return self._distrust(request_id, keys[local:best], local, f"are not this model's KV ({e})")
        self.counters.transferred("store_fetch", nbytes(chunks), time.perf_counter() - started)
        return max(0, imported - local * ct)

    def _distrust(self, request_id: str, keys: list[bytes], num_local: int, why: str) -> int:
        """Chunks that must not become KV: never used, recomputed, and deleted from the store so
        that this prompt's write-back replaces them (it writes past the ``num_local`` it holds).
        Returns the tokens that came from the store: none."""
        log.warning("request %s: the store's chunks %s; recomputing", request_id, why)
        self._stored_chunks[request_id] = num_local
        self._forget(keys)
        return 0

    def _forget(self, keys: list[bytes]) -> None:
        """Delete chunks that failed the check from every node, so the write-back replaces them."""
        try:
            self.store.delete(keys)
        except (StoreError, TransferError) as e:
            log.warning("could not delete %d bad chunks from the store: %s", len(keys), e)

    # -- engine -----------------------------------------------------------------------------------

    def step(self) -> None:
        on_layer = self._send_layers if self.handoff_layers else None
        for seq in self.engine.step(on_layer).finished:  # a prompt's other choices finish beside it, pageless
            task = self._tasks.pop(seq.request_id, None)
            try:
                if task is not None and seq.finish_reason != "abort":
                    self._hand_off(task, seq)
            finally:
                self._streamed.pop(seq.request_id, None)
                self.release(seq)

    def _send_layers(self, layer: int, seqs: list[Sequence]) -> None:
        """Layer-wise hand-off: called after each layer of the step that completes ``seqs``'
        prompts; every ``handoff_layers`` layers (and after the last), the group just computed goes
        to each prompt's decode worker while the next layers compute. Prompts with several choices
        or none to decode are handed off whole."""
        num_layers, k = self.engine.model_cfg.num_layers, self.handoff_layers
        if (layer + 1) % k and layer + 1 != num_layers:
            return
        first = layer // k * k
        for seq in seqs:
            task = self._tasks.get(seq.request_id)
            if (
                task is None
                or task.decode_address is None
                or task.sampling.n > 1
                or task.sampling.max_tokens < 2
            ):
                continue
            if self._streamed.get(seq.request_id, 0) != first:  # a group was lost: the rest goes whole
                continue
            started = time.perf_counter()
            kv = self.engine.pack_layers(seq, first, layer + 1 - first)

            def lost(reason: str, request_id: str = seq.request_id) -> None:
                if request_id in self._streamed:
                    self._streamed[request_id] = -1

            self.send(task.decode_address, KVLayers(seq.request_id, first, (to_buffer(kv),)), lost)
            self._streamed[seq.request_id] = layer + 1
            self.counters.transferred("kv_send", nbytes([kv]), time.perf_counter() - started)

    def _hand_off(self, task: GenerateTask, seq: Sequence) -> None:
        """Each choice's first token to the router; the prompt's KV, once, to the decode worker
        for the choices that go on."""
        store_hits = min(self._store_hits.pop(task.request_id, 0), seq.num_cached_tokens or 0)
        local_hits = (seq.num_cached_tokens or 0) - store_hits
        self.counters.prefilled(seq.num_prompt_tokens, local_hits, store_hits)
        choices = [seq, *seq.siblings]  # choice i of the task is choices[i]
        going_on = [i for i, c in enumerate(choices) if c.finish_reason == "prefilled"]
        streamed = self._streamed.pop(task.request_id, 0)
        if streamed and not going_on and task.decode_address:  # sent ahead, not needed: drop it there
            self.send(task.decode_address, AbortTask(task.request_id))
        if streamed != self.engine.model_cfg.num_layers:
            streamed = 0  # none sent ahead, or one was lost: the whole KV goes with the task
        started = time.perf_counter()
        kv = self.engine.export_kv(seq) if going_on and not streamed else None
        exported_s = time.perf_counter() - started
        self._write_back(task.request_id, seq)
        prompt_logprobs = wire_logprobs(seq.prompt_logprobs or [])
        for i, choice in enumerate(choices):
            done = i not in going_on
            self.send(
                task.reply_to,
                TokenEvent(
                    request_id=choice.request_id, worker_id=self.info.worker_id,
                    token_ids=(choice.output_token_ids[0],), finish_reason=choice.finish_reason if done else None,
                    num_cached_local=local_hits, num_cached_store=store_hits,
                    logprobs=wire_logprobs(choice.logprobs or []), prompt_logprobs=prompt_logprobs,
                ),
            )  # fmt: skip
        if going_on:
            self._send_decode(task, [choices[i] for i in going_on], going_on, kv, exported_s, streamed)

    def _send_decode(
        self,
        task: GenerateTask,
        choices: list[Sequence],
        indices: list[int],
        kv,
        exported_s: float,
        streamed: int = 0,
    ) -> None:
        """Hand the prompt's KV (or, ``streamed``, its layers sent ahead) to the decode worker for
        ``choices`` (task choice ``indices``)."""
        ids = [c.request_id for c in choices]
        if task.decode_address is None:
            for request_id in ids:
                self.fail(task.reply_to, request_id, BAD_REQUEST, "a prefill worker needs a decode_address")
            return
        started = time.perf_counter()
        main, rest = choices[0], choices[1:]
        handoff = DecodeTask(
            request_id=main.request_id, token_ids=task.token_ids, first_token=main.output_token_ids[0],
            sampling=task.sampling, reply_to=task.reply_to, buffers=() if streamed else (to_buffer(kv),),
            siblings=tuple(HandoffChoice(c.request_id, c.output_token_ids[0]) for c in rest),
            sibling_indices=tuple(indices[1:]), index=indices[0], streamed_layers=streamed,
        )  # fmt: skip

        def lost(reason: str) -> None:
            text = f"decode worker at {task.decode_address} did not take the KV: {reason}"
            for request_id in ids:
                self.fail(task.reply_to, request_id, UNAVAILABLE, text)

        self.send(task.decode_address, handoff, lost)
        if not streamed:
            self.counters.transferred("kv_send", nbytes([kv]), exported_s + time.perf_counter() - started)

    def _write_back(self, request_id: str, seq: Sequence) -> None:
        """Put the prompt's full chunks that no store node holds yet to this worker's node."""
        already = self._stored_chunks.pop(request_id, 0)
        self.write_chunks(seq, seq.num_prompt_tokens, already)
