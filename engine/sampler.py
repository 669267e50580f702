"""Token sampling: greedy, temperature, top-k, top-p, per-request seeds, logprobs.

Random rows draw with the exponential-race trick (``argmax(p / E)`` with ``E ~ Exp(1)``), which
samples exactly from ``p`` and lets each seeded row draw its noise from a generator seeded by
(request seed, token index), so its tokens depend neither on the batch nor on the process.
"""

from __future__ import annotations

import torch

from engine.types import SamplingParams, TokenLogprobs


def sample(
    logits: torch.Tensor,
    params: list[SamplingParams],
    seeds: list[int | None],
) -> tuple[list[int], list[TokenLogprobs | None]]:
    """logits: [B, V] float32 → (token per row, logprobs per row or None where not asked).
    ``seeds[i]`` seeds row i's draw (None: the global generator)."""
    tokens = logits.argmax(dim=-1)
    random_rows = [i for i, p in enumerate(params) if not p.greedy]
    if random_rows:
        rows = torch.tensor(random_rows, device=logits.device)
        probs = _filtered_probs(logits[rows], [params[i] for i in random_rows])
        noise = torch.stack([_exponential(probs.shape[-1], seeds[i], probs.device) for i in random_rows])
        tokens[rows] = (probs / noise).argmax(dim=-1)
    token_list = tokens.tolist()
    return token_list, _logprobs(logits, token_list, params)


def _filtered_probs(logits: torch.Tensor, params: list[SamplingParams]) -> torch.Tensor:
    temps = torch.tensor([p.temperature for p in params], device=logits.device).unsqueeze(1)
    logits = logits / temps
    top_k = [p.top_k for p in params]
    top_p = [p.top_p for p in params]
    if any(0 < k < logits.shape[-1] for k in top_k) or any(p < 1.0 for p in top_p):
        logits = _apply_top_k_top_p(logits, top_k, top_p)
    return torch.softmax(logits, dim=-1)


def _apply_top_k_top_p(logits: torch.Tensor, top_k: list[int], top_p: list[float]) -> torch.Tensor:
    vocab = logits.shape[-1]
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    ranks = torch.arange(vocab, device=logits.device).unsqueeze(0)
    k = torch.tensor([k if 0 < k < vocab else vocab for k in top_k], device=logits.device).unsqueeze(1)
    drop = ranks >= k
    sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
    # top-p keeps the smallest head whose mass reaches p: drop a token if the mass before it already does.
    probs = sorted_logits.softmax(dim=-1)
    mass_before = probs.cumsum(dim=-1) - probs
    p = torch.tensor(top_p, device=logits.device).unsqueeze(1)
    drop |= mass_before >= p
    drop[:, 0] = False  # the most likely token always survives
    sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
    return torch.empty_like(logits).scatter_(-1, order, sorted_logits)


def _exponential(size: int, seed: int | None, device: torch.device) -> torch.Tensor:
    # Seeded draws happen on the CPU so one seed reproduces on every device.
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    noise = torch.empty(size, dtype=torch.float32).exponential_(generator=generator)
    return noise.to(device)


def _logprobs(
    logits: torch.Tensor, tokens: list[int], params: list[SamplingParams]
) -> list[TokenLogprobs | None]:
    wanted = [i for i, p in enumerate(params) if p.logprobs is not None]
    out: list[TokenLogprobs | None] = [None] * len(params)
    if not wanted:
        return out
    logp = torch.log_softmax(logits[wanted], dim=-1)
    max_n = max(params[i].logprobs for i in wanted)
    top_vals, top_ids = logp.topk(max_n, dim=-1) if max_n else (logp[:, :0], logp[:, :0].long())
    chosen = logp.gather(1, torch.tensor([tokens[i] for i in wanted], device=logp.device).unsqueeze(1))
    for row, i in enumerate(wanted):
        n = params[i].logprobs
        top = dict(zip(top_ids[row, :n].tolist(), top_vals[row, :n].tolist()))
        out[i] = TokenLogprobs(token_id=tokens[i], logprob=float(chosen[row, 0]), top=top)
    return out
