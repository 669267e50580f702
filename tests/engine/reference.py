"""transformers as the numerical reference: greedy continuations and log-softmax, one prompt at a time."""

from __future__ import annotations

import functools
from pathlib import Path

import torch


@functools.cache
def hf_model(path: Path):
    import transformers

    return transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


def hf_greedy(path: Path, prompt: list[int], max_new_tokens: int, stop_at_eos: bool = False) -> list[int]:
    """transformers' greedy continuation of one unpadded prompt (no batching, no padding effects)."""
    model = hf_model(path)
    kwargs = {} if stop_at_eos else {"eos_token_id": None}
    ids = torch.tensor([prompt])
    with torch.no_grad():
        # An explicit mask: without one, transformers masks every prompt token equal to the pad id,
        # and chat templates contain it (SmolLM2 pads with <|im_end|>).
        out = model.generate(
            ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens, do_sample=False,
            pad_token_id=model.config.pad_token_id or 0, **kwargs,
        )  # fmt: skip
    return out[0, len(prompt) :].tolist()


def hf_log_softmax(path: Path, tokens: list[int]) -> torch.Tensor:
    """[len(tokens), vocab] log-probabilities of the next token after each position."""
    with torch.no_grad():
        logits = hf_model(path)(torch.tensor([tokens])).logits[0].float()
    return torch.log_softmax(logits, dim=-1)


def mixed_prompts(vocab: int, seed: int = 0) -> list[list[int]]:
    """Ten prompts of mixed lengths; the last three extend earlier ones (shared prefixes)."""
    g = torch.Generator().manual_seed(seed)

    def rand(n: int) -> list[int]:
        return torch.randint(2, vocab, (n,), generator=g).tolist()

    base = [rand(n) for n in (5, 41, 17, 3, 70, 26, 9)]
    return base + [base[1] + rand(7), base[4][:50] + rand(12), base[4] + rand(1)]
