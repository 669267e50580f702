"""The engine loop: ``step()`` is schedule → run → postprocess. ``LLMEngine`` is what workers drive."""

from __future__ import annotations

import itertools
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from engine.config import EngineConfig, ModelConfig
from engine.kv_cache_manager import KVCacheManager
from engine.memory import size_kv_cache
from engine.page_pool import PagePool
from engine.runner import ModelRunner, kv_bytes_per_page
from engine.sampler import sample
from engine.scheduler import Scheduler
from engine.sequence import Sequence
from engine.step_cost import StepCostFit
from engine.types import EngineLoad, SamplingParams
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
        self.kv_bytes_per_token = page_bytes // config.page_size  # what a store fetch moves per token
        num_pages = config.num_pages or size_kv_cache(config, page_bytes, max_len)
        self.runner = ModelRunner(config, self.model_cfg, max_len, num_pages)
        layout = {
            "num_layers": self.model_cfg.num_layers,
            "num_kv_heads": self.model_cfg.num_kv_heads,
            "head_dim": self.model_cfg.head_dim,
        }
        self.fingerprint = model_fingerprint(config.model, config.dtype, layout)
        self.pool = PagePool(num_pages, config.page_size)
        self.kv = KVCacheManager(self.pool, self.fingerprint, config.enable_prefix_caching)
        self.scheduler = Scheduler(self.kv, config.max_num_seqs, config.max_num_batched_tokens)
        self._ids = itertools.count()
        self.step_ms = 0.0  # exponential moving average of busy steps
        self.step_cost = StepCostFit()  # seconds = fixed + per_token * tokens, over recent busy steps
        log.info(
            "engine ready: %s (%s) on %s, %d pages x %d tokens (%.1f MiB KV), max_model_len %d",
            self.model_cfg.architecture, config.dtype, config.device, num_pages, config.page_size,
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
    ) -> Sequence:
        """Queue a tokenized prompt. Raises ValueError if it can never be served.

        ``prefill_only``: stop after the first token (finish reason "prefilled" unless a real stop
        applies) and keep the prompt's pages; export them with :meth:`export_kv`, then :meth:`release`.
        """
        self.validate(prompt, params)
        seq = Sequence(request_id if request_id is not None else str(next(self._ids)), prompt, params)
        seq.prefill_only = seq.hold_pages = prefill_only
        self.scheduler.add(seq)
        return seq

    def add_prefilled(
        self,
        prompt: list[int],
        first_token: int,
        params: SamplingParams,
        kv: torch.Tensor,
        request_id: str,
        hold_pages: bool = False,
    ) -> Sequence:
        """Queue a request whose prompt was prefilled elsewhere: ``kv`` holds the prompt's pages
        (as :meth:`export_kv` returns them) and ``first_token`` is the token prefill sampled.
        ``hold_pages``: keep its pages when it finishes (copy them out with :meth:`pack_pages`,
        then :meth:`release`), aborted or not."""
        self.validate(prompt, params)
        vocab = self.model_cfg.vocab_size
        if not isinstance(first_token, int) or not 0 <= first_token < vocab:  # the next step's input
            raise ValueError(f"first token id {first_token!r} is outside the vocabulary [0, {vocab})")
        self.check_kv(kv, -(-len(prompt) // self.pool.page_size), f"KV for a {len(prompt)}-token prompt")
        seq = Sequence(request_id, prompt, params)
        seq.token_ids.append(first_token)
        seq.pending_kv = kv
        seq.num_cached_tokens = 0
        seq.hold_pages = hold_pages
        self.scheduler.add(seq)
        return seq

    def check_kv(self, kv: object, num_pages: int | None = None, what: str = "a KV buffer") -> None:
        """``ValueError`` unless ``kv`` is packed pages of this engine's layout and dtype (``num_pages``
        of them, or any positive number): KV from another process is checked before it touches a page."""
        self.runner.check_packed(kv, num_pages, what)

    def export_kv(self, seq: Sequence) -> torch.Tensor:
        """The computed prompt KV of a finished prefill-only sequence, packed (a copy)."""
        assert seq.prefill_only and seq.block_table, "only held prefill-only sequences can be exported"
        return self.pack_pages(seq, 0, -(-seq.num_prompt_tokens // self.pool.page_size))

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
        if not isinstance(params, SamplingParams):
            raise ValueError(f"sampling params must be a SamplingParams, got {type(params).__name__}")
        if len(prompt) == 0:
            raise ValueError("prompt is empty: at least one token is needed")
        vocab = self.model_cfg.vocab_size
        bad = next((t for t in prompt if not isinstance(t, int) or not 0 <= t < vocab), None)
        if bad is not None:
            raise ValueError(f"prompt token id {bad!r} is outside the vocabulary [0, {vocab})")
        total = len(prompt) + params.max_tokens
        if total > self.max_model_len:
            raise ValueError(
                f"prompt ({len(prompt)} tokens) + max_tokens ({params.max_tokens}) = {total} exceeds the "
                f"model's context of {self.max_model_len} tokens; shorten the prompt or lower max_tokens"
            )
        if total > self.capacity_tokens:
            raise ValueError(
                f"prompt + max_tokens = {total} tokens exceeds the KV cache ({self.capacity_tokens} tokens); "
                "raise num_pages"
            )

    def abort(self, request_id: str) -> Sequence | None:
        return self.scheduler.abort(request_id)

    def has_unfinished(self) -> bool:
        return self.scheduler.has_unfinished()

    def step(self) -> StepResult:
        start = time.perf_counter()
        result = self._step()
        if result.num_tokens:
            seconds = time.perf_counter() - start
            ms = seconds * 1e3
            self.step_ms = ms if self.step_ms == 0 else 0.8 * self.step_ms + 0.2 * ms
            self.step_cost.add(result.num_tokens, seconds)
        return result

    def _step(self) -> StepResult:
        batch = self.scheduler.schedule()
        result = StepResult(num_tokens=batch.num_tokens)
        if not batch:
            return result
        for seq in batch.seqs:
            if seq.pending_kv is not None:  # just admitted with its prompt's KV: put it in its pages
                self.runner.unpack_pages(seq.block_table[: seq.pending_kv.shape[3]], seq.pending_kv)
                seq.pending_kv = None
        sample_rows = [
            i
            for i, (seq, n) in enumerate(zip(batch.seqs, batch.num_new_tokens))
            if seq.num_computed_tokens + n == seq.num_tokens
        ]
        logits = self.runner.run(batch, sample_rows)
        for seq, n in zip(batch.seqs, batch.num_new_tokens):
            seq.num_computed_tokens += n
            self.kv.commit(seq)
        if not sample_rows:
            return result
        sampled_seqs = [batch.seqs[i] for i in sample_rows]
        tokens, logprobs = sample(
            logits, [s.params for s in sampled_seqs], [s.token_seed() for s in sampled_seqs]
        )
        for seq, token, lp in zip(sampled_seqs, tokens, logprobs):
            seq.token_ids.append(token)
            if lp is not None:
                seq.logprobs.append(lp)
            result.sampled.append(seq)
            reason = self._stop_reason(seq, token)
            if reason is not None:
                self.scheduler.finish(seq, reason)
                result.finished.append(seq)
        return result

    def _stop_reason(self, seq: Sequence, token: int) -> str | None:
        params = seq.params
        if not params.ignore_eos and token in self.model_cfg.eos_token_ids:
            return "stop"
        if token in params.stop_token_ids:
            return "stop"
        if seq.num_output_tokens >= params.max_tokens or seq.num_tokens >= self.max_model_len:
            return "length"
        if seq.prefill_only:
            return "prefilled"
        return None

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
