"""The engine loop: ``step()`` is schedule → run → postprocess. ``LLMEngine`` is what workers drive."""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass, field

import torch

from engine.config import EngineConfig, ModelConfig
from engine.kv_cache_manager import KVCacheManager
from engine.memory import size_kv_cache
from engine.page_pool import PagePool
from engine.runner import ModelRunner, kv_bytes_per_page
from engine.sampler import sample
from engine.scheduler import Scheduler
from engine.sequence import Sequence
from engine.types import SamplingParams
from kvstore.keys import model_fingerprint

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
        max_len = config.max_model_len or self.model_cfg.max_position_embeddings
        self.max_model_len = max_len
        page_bytes = kv_bytes_per_page(self.model_cfg, config.page_size, config.torch_dtype)
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
        log.info(
            "engine ready: %s (%s) on %s, %d pages x %d tokens (%.1f MiB KV), max_model_len %d",
            self.model_cfg.architecture, config.dtype, config.device, num_pages, config.page_size,
            num_pages * page_bytes / 2**20, max_len,
        )  # fmt: skip

    @property
    def capacity_tokens(self) -> int:
        return self.pool.num_pages * self.pool.page_size

    def add_request(
        self, prompt: list[int], params: SamplingParams, request_id: str | None = None
    ) -> Sequence:
        """Queue a tokenized prompt. Raises ValueError if it can never be served."""
        self.validate(prompt, params)
        seq = Sequence(request_id if request_id is not None else str(next(self._ids)), prompt, params)
        self.scheduler.add(seq)
        return seq

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
        batch = self.scheduler.schedule()
        result = StepResult(num_tokens=batch.num_tokens)
        if not batch:
            return result
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
            logits, [s.params for s in sampled_seqs], [s.generator for s in sampled_seqs]
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
        return None

    def kv_usage(self) -> float:
        return self.pool.num_used_pages / self.pool.num_pages


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"
