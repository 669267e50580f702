"""The offline API: ``LLM(model_dir).generate(prompts, params)``."""

from __future__ import annotations

from collections.abc import Sequence as Seq
from typing import Any

from tqdm import tqdm

from engine.config import EngineConfig
from engine.llm_engine import LLMEngine, default_device
from engine.memory import tune_host_allocator
from engine.sequence import Sequence
from engine.tokenizer import Tokenizer, has_tokenizer
from engine.types import Prompt, RequestOutput, SamplingParams


class LLM:
    """Generate from a batch of prompts with continuous batching; results come back in order.

    >>> llm = LLM("path/to/hf_dir", dtype="float32")
    >>> llm.generate(["a prompt", [1, 2, 3]], SamplingParams(temperature=0.0, max_tokens=32))
    """

    def __init__(
        self,
        model: str,
        dtype: str = "float32",
        page_size: int = 16,
        num_pages: int | None = None,
        max_num_seqs: int = 64,
        max_num_batched_tokens: int = 2048,
        device: str | None = None,
        **engine_kwargs: Any,
    ) -> None:
        tune_host_allocator()
        self.config = EngineConfig(
            model=str(model), dtype=dtype, device=device or default_device(), page_size=page_size,
            num_pages=num_pages, max_num_seqs=max_num_seqs, max_num_batched_tokens=max_num_batched_tokens,
            **engine_kwargs,
        )  # fmt: skip
        self.engine = LLMEngine(self.config)
        self.tokenizer = Tokenizer(model) if has_tokenizer(model) else None

    def generate(
        self,
        prompts: Prompt | Seq[Prompt],
        sampling_params: SamplingParams | Seq[SamplingParams] | None = None,
        use_tqdm: bool = False,
    ) -> list[RequestOutput]:
        """Run prompts (text or token ids) to completion. Raises ValueError for a bad prompt or
        parameters before anything runs."""
        if isinstance(prompts, str) or (prompts and isinstance(prompts[0], int)):
            prompts = [prompts]
        params = sampling_params if sampling_params is not None else SamplingParams()
        params_list = list(params) if isinstance(params, Seq) else [params] * len(prompts)
        if len(params_list) != len(prompts):
            raise ValueError(f"got {len(prompts)} prompts but {len(params_list)} sampling params")
        token_lists = [self._tokenize(p) for p in prompts]
        for ids, p in zip(token_lists, params_list):
            self.engine.validate(ids, p)
        seqs = [self.engine.add_request(ids, p) for ids, p in zip(token_lists, params_list)]
        bar = tqdm(total=len(seqs), desc="generate", disable=not use_tqdm)
        while self.engine.has_unfinished():
            bar.update(len(self.engine.step().finished))
        bar.close()
        return [self._output(s) for s in seqs]

    def chat(
        self, messages: list[dict[str, Any]], sampling_params: SamplingParams | None = None
    ) -> RequestOutput:
        """One chat turn: the messages through the model's chat template, then generate."""
        if self.tokenizer is None:
            raise ValueError("this model directory has no tokenizer")
        ids = self.tokenizer.apply_chat_template(messages)
        return self.generate([ids], sampling_params)[0]

    def _tokenize(self, prompt: Prompt) -> list[int]:
        if isinstance(prompt, str):
            if self.tokenizer is None:
                raise ValueError(
                    "text prompts need a tokenizer; this model directory has none (pass token ids)"
                )
            if not prompt:
                raise ValueError("prompt is empty")
            return self.tokenizer.encode(prompt)
        if not isinstance(prompt, (list, tuple)):
            raise ValueError(f"a prompt is a string or a list of token ids, got {type(prompt).__name__}")
        return list(prompt)

    def _output(self, seq: Sequence) -> RequestOutput:
        out_ids = seq.output_token_ids
        return RequestOutput(
            request_id=seq.request_id,
            prompt_token_ids=seq.token_ids[: seq.num_prompt_tokens],
            token_ids=out_ids,
            text=self.tokenizer.decode(out_ids) if self.tokenizer else "",
            finish_reason=seq.finish_reason or "length",
            num_cached_tokens=seq.num_cached_tokens or 0,
            logprobs=seq.logprobs,
            prompt_logprobs=seq.prompt_logprobs,
        )
