"""The engine loop: ``step()`` is schedule → run → postprocess. ``LLMEngine`` is what workers drive."""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Callable
from collections.abc import Sequence as Sequence_
from dataclasses import dataclass, field
from pathlib import Path

import torch

from engine import kv_codec
from engine.config import EngineConfig, ModelConfig
from engine.kv_cache_manager import KVCacheManager
from engine.memory import size_kv_cache
from engine.page_pool import PagePool
from engine.postprocess import append_token, logit_rows, score_prompt, stop_reason
from engine.request_check import RequestChecker
from engine.runner import ModelRunner, kv_bytes_per_page
from engine.sampler import sample
from engine.scheduler import Scheduler
from engine.sequence import Sequence, Status
from engine.step_cost import StepCostFit
from engine.types import EngineLoad, KVPages, SamplingParams
from kvstore.keys import chain_keys, model_fingerprint

log = logging.getLogger("tandem.engine")


@dataclass
class StepResult:
    """What one step changed: sequences that got a token (``sampled``) and those now finished."""

    sampled: list[Sequence] = field(default_factory=list)
    finished: list[Sequence] = field(default_factory=list)
    num_tokens: int = 0


class LLMEngine:
    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        self.model_cfg = ModelConfig.from_dir(config.model)
        self.model_name = Path(config.model).resolve().name
        max_len = config.max_model_len or self.model_cfg.max_position_embeddings
        self.max_model_len = max_len
        page_bytes = kv_bytes_per_page(self.model_cfg, config.page_size, config.torch_dtype)
        # what a hand-off or a store fetch moves per token (the pages' bytes unless KV travels as int8)
        self.kv_bytes_per_token = kv_codec.bytes_per_token(
            self.model_cfg, config.torch_dtype, config.kv_dtype
        )
        num_pages = config.num_pages or size_kv_cache(config, page_bytes, max_len)
        self.runner = ModelRunner(config, self.model_cfg, max_len, num_pages)
        layout = {
            "num_layers": self.model_cfg.num_layers,
            "num_kv_heads": self.model_cfg.num_kv_heads,
            "head_dim": self.model_cfg.head_dim,
        }
        self.fingerprint = model_fingerprint(config.model, config.numerics, layout)
        self.pool = PagePool(num_pages, config.page_size)
        self.kv = KVCacheManager(self.pool, self.fingerprint, config.enable_prefix_caching)
        self.scheduler = Scheduler(self.kv, config.max_num_seqs, config.max_num_batched_tokens)
        self._ids = itertools.count()
        self.step_ms = 0.0  # exponential moving average of busy steps
        self.step_cost = StepCostFit()  # seconds = fixed + per_token * tokens, over recent busy steps
        self.requests = RequestChecker(config.model, self.model_cfg, max_len, num_pages * config.page_size)
        self._unborn: dict[str, Sequence] = {}  # sibling request id -> the sequence it forks from
        log.info(
            "engine ready: %s (%s) on %s, %d pages x %d tokens (%.1f MiB KV), max_model_len %d",
            self.model_cfg.architecture, config.numerics, config.device, num_pages, config.page_size,
            num_pages * page_bytes / 2**20, max_len,
        )  # fmt: skip

    @property
    def capacity_tokens(self) -> int:
        return self.pool.num_pages * self.pool.page_size

    def add_request(
        self,
        prompt: list[int],
        params: SamplingParams,
        request_id: str | None = None,
        prefill_only: bool = False,
        siblings: Sequence_[tuple[str, SamplingParams]] = (),
    ) -> Sequence:
        """Queue a tokenized prompt. Raises ValueError if it can never be served.

        ``prefill_only``: stop after the first token (finish reason "prefilled" unless a real stop
        applies) and keep the prompt's pages; export them with :meth:`export_kv`, then :meth:`release`.
        ``siblings`` (request id, parameters): more choices of the same prompt (OpenAI's ``n``),
        prefilled once: when this sequence samples its first token, each samples its own from the
        same logits and goes on with the prompt's pages shared through the prefix cache (or, with
        ``prefill_only``, finishes beside it without pages). They are in ``seq.siblings``.
        """
        for p in (params, *(p for _, p in siblings)):
            self.requests.check(prompt, p)
        seq = self._sequence(request_id if request_id is not None else str(next(self._ids)), prompt, params)
        seq.prefill_only = seq.hold_pages = prefill_only
        for sibling_id, sibling_params in siblings:
            sibling = self._sequence(sibling_id, prompt, sibling_params)
            sibling.prefill_only = prefill_only
            seq.siblings.append(sibling)
            self._unborn[sibling_id] = seq
        self.scheduler.add(seq)
        return seq

    def _sequence(self, request_id: str, prompt: list[int], params: SamplingParams) -> Sequence:
        seq = Sequence(request_id, prompt, params)
        seq.constraint = self.requests.compile(params)
        return seq

    def add_prefilled(
        self,
        prompt: list[int],
        first_token: int,
        params: SamplingParams,
        kv: torch.Tensor | list[torch.Tensor] | KVPages,
        request_id: str,
        hold_pages: bool = False,
    ) -> Sequence:
        """Queue a request whose prompt was prefilled elsewhere: ``kv`` holds the prompt's pages
        (as :meth:`export_kv` returns them, or in groups of layers, or already written into pages
        of this engine: :class:`KVPages`, which the sequence then owns) and ``first_token`` is the
        token prefill sampled.
        ``hold_pages``: keep its pages when it finishes (copy them out with :meth:`pack_pages`,
        then :meth:`release`), aborted or not. Prompt logprobs, if asked for, are the prefilling
        engine's to return: here the sequence has none. With a grammar, ``first_token`` is replayed
        into it: a first token the grammar forbids is a ``ValueError``."""
        self.requests.check(prompt, params)
        vocab = self.model_cfg.vocab_size
        if not isinstance(first_token, int) or not 0 <= first_token < vocab:  # the next step's input
            raise ValueError(f"first token id {first_token!r} is outside the vocabulary [0, {vocab})")
        num_pages = -(-len(prompt) // self.pool.page_size)
        if isinstance(kv, KVPages):
            if len(kv.pages) != num_pages:
                raise ValueError(
                    f"{len(kv.pages)} pages of KV for a {len(prompt)}-token prompt; it needs {num_pages}"
                )
            groups: list[torch.Tensor] = []
        else:
            groups = self._layer_groups(kv, num_pages, f"KV for a {len(prompt)}-token prompt")
        constraint = self.requests.compile(params)
        if constraint is not None:
            try:
                constraint.accept(first_token)
            except ValueError as e:
                raise ValueError(f"the first token does not match the request's grammar: {e}") from e
        seq = Sequence(request_id, prompt, params)
        seq.constraint = constraint
        seq.token_ids.append(first_token)
        seq.pending_kv = groups  # none left to write when the pages hold it already
        if isinstance(kv, KVPages):
            seq.block_table = list(kv.pages)
        seq.prompt_logprobs = None  # the prompt ran elsewhere: its logprobs come from that engine
        seq.num_cached_tokens = 0
        seq.hold_pages = hold_pages
        self.scheduler.add(seq)
        return seq

    def reserve_pages(self, num_pages: int) -> list[int] | None:
        """Pages for a prompt's KV that arrives ahead of its request (a layer-wise hand-off), or
        None if the pool is short: fill them with :meth:`write_layers`, then hand them over in
        ``add_prefilled(kv=KVPages(pages))`` or give them back with :meth:`release_pages`."""
        return self.pool.allocate(num_pages)

    def write_layers(self, pages: list[int], kv: torch.Tensor, first_layer: int) -> int:
        """Write packed KV of layers ``first_layer ..`` into reserved ``pages``; returns how many
        layers it held. ``ValueError`` (nothing written) unless it is this engine's layout."""
        count = _num_layers_in(kv)
        if not 0 <= first_layer < self.model_cfg.num_layers:
            raise ValueError(f"layer {first_layer} is outside this model's {self.model_cfg.num_layers}")
        self.runner.unpack_pages(pages, kv, slice(first_layer, first_layer + count))
        return count

    def release_pages(self, pages: list[int]) -> None:
        """Give back pages of :meth:`reserve_pages` that no request took."""
        self.pool.release(pages)

    def _layer_groups(self, kv: object, num_pages: int, what: str) -> list[torch.Tensor]:
        """``kv`` (one packed buffer, or a list of them covering the layers in order, as a
        layer-wise hand-off delivers them) checked, as a list of groups."""
        if not isinstance(kv, (list, tuple)):
            self.check_kv(kv, num_pages, what)
            return [kv]
        first = 0
        for group in kv:
            layers = slice(first, first + _num_layers_in(group))
            self.runner.check_packed(group, num_pages, f"{what} (layers {first}..{layers.stop - 1})", layers)
            first = layers.stop
        if first != self.model_cfg.num_layers:
            raise ValueError(f"{what}: {first} layers of KV, this model has {self.model_cfg.num_layers}")
        return list(kv)

    def check_kv(self, kv: object, num_pages: int | None = None, what: str = "a KV buffer") -> None:
        """``ValueError`` unless ``kv`` is packed pages of this engine's layout and dtype (``num_pages``
        of them, or any positive number): KV from another process is checked before it touches a page."""
        self.runner.check_packed(kv, num_pages, what)

    def export_kv(self, seq: Sequence) -> torch.Tensor:
        """The computed prompt KV of a finished prefill-only sequence, packed (a copy)."""
        return self.pack_layers(seq, 0, self.model_cfg.num_layers)

    def pack_layers(self, seq: Sequence, first_layer: int, num_layers: int) -> torch.Tensor:
        """The prompt KV of layers ``first_layer .. first_layer + num_layers - 1`` of a prefill-only
        sequence, packed (a copy): :meth:`export_kv` a few layers at a time."""
        assert seq.prefill_only and seq.block_table, "only held prefill-only sequences can be exported"
        pages = seq.block_table[: -(-seq.num_prompt_tokens // self.pool.page_size)]
        return self.runner.pack_pages(pages, slice(first_layer, first_layer + num_layers))

    def pack_pages(self, seq: Sequence, first_page: int, num_pages: int) -> torch.Tensor:
        """KV of ``num_pages`` of a held sequence's pages from ``first_page`` on, packed (a copy)."""
        return self.runner.pack_pages(seq.block_table[first_page : first_page + num_pages])

    def pack_chunks(
        self, seq: Sequence, num_tokens: int, chunk_tokens: int, first: int = 0
    ) -> tuple[list[bytes], list[torch.Tensor]]:
        """The store chunks of a held sequence's first ``num_tokens`` tokens, from chunk ``first``
        on: their chain keys and their KV, packed (``chunk_tokens`` a multiple of the page size)."""
        keys = chain_keys(seq.token_ids[:num_tokens], chunk_tokens, self.fingerprint)[first:]
        pages = chunk_tokens // self.pool.page_size
        chunks = [self.pack_pages(seq, i * pages, pages) for i in range(first, first + len(keys))]
        return keys, chunks

    def release(self, seq: Sequence) -> None:
        """Free the pages a sequence that holds them kept after finishing."""
        self.kv.free(seq)

    def cached_prefix_tokens(self, token_ids: list[int]) -> int:
        """How many leading tokens of ``token_ids`` this engine holds in its prefix cache now."""
        ps = self.pool.page_size
        keys = chain_keys(token_ids, ps, self.fingerprint)
        return len(self.pool.lookup(keys, [token_ids[i * ps : (i + 1) * ps] for i in range(len(keys))])) * ps

    def import_prefix(self, token_ids: list[int], chunks: list[torch.Tensor], start_token: int = 0) -> int:
        """Load KV computed elsewhere (store chunks, in prefix order from ``start_token``, each a
        whole number of pages) into the local prefix cache so the next request with this prefix
        hits it. Returns how many leading tokens are now cached locally; stops early when pages run
        out (never preempts). The prefix before ``start_token`` must be cached here already.
        ``ValueError``, with nothing changed, if a chunk is not this engine's layout."""
        ps = self.pool.page_size
        if start_token % ps:
            raise ValueError(f"start_token must be a multiple of the page size {ps}, got {start_token}")
        for i, chunk in enumerate(chunks):  # every chunk checked before any page is touched
            self.check_kv(chunk, what=f"store chunk {i}")
        num_pages = start_token // ps + sum(c.shape[3] for c in chunks)
        if num_pages * ps > len(token_ids):
            raise ValueError(f"{num_pages} pages of KV for a {len(token_ids)}-token prompt: more than it has")
        keys = chain_keys(token_ids[: num_pages * ps], ps, self.fingerprint)
        blocks = [token_ids[i * ps : (i + 1) * ps] for i in range(num_pages)]
        held = self.pool.lookup(keys, blocks)
        if len(held) < start_token // ps:
            return len(held) * ps  # the part before start_token is gone: nothing to attach to
        self.pool.acquire(held)  # held until the end, so that allocating cannot evict the chain's head
        try:
            first = start_token // ps
            for chunk in chunks:
                n = chunk.shape[3]
                skip = min(n, max(0, len(held) - first))  # pages of this chunk already cached here
                if skip < n:
                    pages = self.pool.allocate(n - skip)
                    if pages is None:
                        return first * ps
                    self.runner.unpack_pages(pages, chunk[:, :, :, skip:])
                    for i, page in enumerate(pages):
                        self.pool.register(page, keys[first + skip + i], blocks[first + skip + i])
                    held += pages
                first += n
            return first * ps
        finally:
            self.pool.release(held)

    def validate(self, prompt: list[int], params: SamplingParams) -> None:
        """``ValueError`` naming the problem if the request can never be served here (its grammar,
        if any, is compiled to check it)."""
        self.requests.check(prompt, params)
        self.requests.compile(params)

    def abort(self, request_id: str) -> Sequence | None:
        """Drop a request wherever it is (a sibling not yet born included), freeing its pages;
        None if it is unknown. A sequence aborted before its first token takes its siblings along."""
        parent = self._unborn.pop(request_id, None)
        if parent is not None:
            sibling = next(s for s in parent.siblings if s.request_id == request_id)
            parent.siblings.remove(sibling)
            sibling.status, sibling.finish_reason = Status.FINISHED, "abort"
            return sibling
        seq = self.scheduler.abort(request_id)
        if seq is not None and seq.num_output_tokens == 0:
            for sibling in seq.siblings:
                self._unborn.pop(sibling.request_id, None)
        return seq

    def has_unfinished(self) -> bool:
        return self.scheduler.has_unfinished()

    def step(self, on_layer: Callable[[int, list[Sequence]], None] | None = None) -> StepResult:
        """Run one step of the continuous batch. ``on_layer(i, seqs)``, if given, is called after
        each decoder layer ``i`` with the prefill-only sequences whose prompt completes in this
        step (only when there are some): their KV of layers ``0..i`` is whole from then on, so a
        prefill worker can send it (:meth:`pack_layers`) while the later layers compute."""
        start = time.perf_counter()
        result = self._step(on_layer)
        if result.num_tokens:
            seconds = time.perf_counter() - start
            ms = seconds * 1e3
            self.step_ms = ms if self.step_ms == 0 else 0.8 * self.step_ms + 0.2 * ms
            self.step_cost.add(result.num_tokens, seconds)
        return result

    def _step(self, on_layer: Callable[[int, list[Sequence]], None] | None) -> StepResult:
        batch = self.scheduler.schedule()
        result = StepResult(num_tokens=batch.num_tokens)
        if not batch:
            return result
        for seq in batch.seqs:
            if seq.pending_kv is not None:  # just admitted with its prompt's KV: put it in its pages
                skip, first = seq.num_shared_kv_pages, 0  # shared pages hold theirs
                for group in seq.pending_kv:
                    layers = slice(first, first + group.shape[0])
                    self.runner.unpack_pages(
                        seq.block_table[skip : group.shape[3]], group[:, :, :, skip:], layers
                    )
                    first = layers.stop
                seq.pending_kv = None
        sample_rows, prompt_positions = logit_rows(batch)
        completing = [
            seq for seq, n in zip(batch.seqs, batch.num_new_tokens)
            if seq.prefill_only and seq.num_computed_tokens + n == seq.num_prompt_tokens
        ]  # fmt: skip
        layer_done = None if on_layer is None or not completing else (lambda i: on_layer(i, completing))
        logits, prompt_logits = self.runner.run(batch, sample_rows, prompt_positions, layer_done)
        for row, span in prompt_positions.items():
            score_prompt(batch.seqs[row], span, prompt_logits[row])
        for seq, n in zip(batch.seqs, batch.num_new_tokens):
            seq.num_computed_tokens += n
            self.kv.commit(seq)
        if sample_rows:
            self._postprocess([batch.seqs[i] for i in sample_rows], logits, result)
        return result

    def _postprocess(self, seqs: list[Sequence], logits: torch.Tensor, result: StepResult) -> None:
        """Sample the next token of each of ``seqs`` (row i of ``logits``), append it, retire the
        sequences that stop."""
        eos = self.model_cfg.eos_token_ids
        tokens, logprobs = sample(logits, seqs, eos)
        for row, (seq, token, lp) in enumerate(zip(seqs, tokens, logprobs)):
            append_token(seq, token, lp)
            result.sampled.append(seq)
            if seq.num_output_tokens == 1 and seq.siblings:
                self._fork(seq, logits[row], result)
            reason = stop_reason(seq, token, eos, self.max_model_len)
            if reason is not None:
                self.scheduler.finish(seq, reason)
                result.finished.append(seq)

    def _fork(self, parent: Sequence, logits: torch.Tensor, result: StepResult) -> None:
        """``parent`` sampled its first token from ``logits``: its siblings sample theirs from the
        same row, then join the queue, where their prompt's full pages are the parent's (committed
        this step) and only the tail after them is run again; prefill-only ones finish here."""
        siblings = parent.siblings
        eos = self.model_cfg.eos_token_ids
        tokens, logprobs = sample(logits.unsqueeze(0).repeat(len(siblings), 1), siblings, eos)
        for sibling, token, lp in zip(siblings, tokens, logprobs):
            self._unborn.pop(sibling.request_id, None)
            append_token(sibling, token, lp)
            sibling.num_cached_tokens = parent.num_cached_tokens
            if parent.prompt_logprobs is not None:
                sibling.prompt_logprobs = list(parent.prompt_logprobs)
            result.sampled.append(sibling)
            reason = stop_reason(sibling, token, eos, self.max_model_len)
            if reason is None:
                self.scheduler.add(sibling)
            else:
                sibling.status, sibling.finish_reason = Status.FINISHED, reason
                result.finished.append(sibling)

    def load(self) -> EngineLoad:
        """What a worker tells the router about this engine's load."""
        sched = self.scheduler
        queued = sum(s.num_uncomputed_tokens for s in sched.waiting)
        queued += sum(s.num_uncomputed_tokens for s in sched.running if s.num_uncomputed_tokens > 1)
        return EngineLoad(
            num_running=len(sched.running),
            num_waiting=len(sched.waiting),
            queued_prefill_tokens=queued,
            free_pages=self.pool.num_free_pages,
            total_pages=self.pool.num_pages,
            step_ms=self.step_ms,
            step_fixed_s=self.step_cost.fixed_s,
            step_per_token_s=self.step_cost.per_token_s,
            step_samples=self.step_cost.num_steps,
        )


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def _num_layers_in(kv: object) -> int:
    """The layers a packed KV buffer says it holds (1 for anything that is not one: the layout
    check that follows names what is wrong with it)."""
    return kv.shape[0] if isinstance(kv, torch.Tensor) and kv.dim() == 6 else 1
