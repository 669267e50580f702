"""Token sampling: logit adjustments, greedy, temperature, min-p, top-k, top-p, per-request seeds,
and the logprobs of sampled and prompt tokens.

The order is vLLM's V1 sampler's: ``min_tokens`` masks and ``logit_bias``, then the repetition,
frequency and presence penalties, then each constrained row's grammar mask (greedy rows take their
argmax here); then temperature, min-p, top-k and top-p shape what random rows draw from. Logprobs
come from the raw logits. A batch where no row adjusts its logits skips all of it.

Random rows draw with the exponential-race trick (``argmax(p / E)`` with ``E ~ Exp(1)``), which
samples exactly from ``p`` and lets each seeded row draw its noise from a generator seeded by
(request seed, token index), so its tokens depend neither on the batch nor on the process.
"""

from __future__ import annotations

from collections.abc import Collection
from collections.abc import Sequence as Seq

import torch
from torch.nn.utils.rnn import pad_sequence

from engine.sequence import Sequence
from engine.types import SamplingParams, TokenLogprobs


def sample(
    logits: torch.Tensor, seqs: Seq[Sequence], eos_token_ids: Collection[int] = ()
) -> tuple[list[int], list[TokenLogprobs | None]]:
    """logits: [B, V] float32, row i for ``seqs[i]`` (whose params, prompt and output tokens and
    next seed it reads) → (token per row, logprobs per row or None where not asked).
    ``eos_token_ids``: the model's, masked like the stop tokens until ``min_tokens`` is reached."""
    params = [s.params for s in seqs]
    adjusted = adjust_logits(logits, seqs, eos_token_ids)
    tokens = adjusted.argmax(dim=-1)
    random_rows = [i for i, p in enumerate(params) if not p.greedy]
    if random_rows:
        rows = torch.tensor(random_rows, device=logits.device)
        probs = sampling_probs(adjusted[rows], [params[i] for i in random_rows])
        vocab, dev = probs.shape[-1], probs.device
        noise = torch.stack([_exponential(vocab, seqs[i].token_seed(), dev) for i in random_rows])
        tokens[rows] = (probs / noise).argmax(dim=-1)
    token_list = tokens.tolist()
    return token_list, _logprobs(logits, token_list, params)


def adjust_logits(
    logits: torch.Tensor, seqs: Seq[Sequence], eos_token_ids: Collection[int] = ()
) -> torch.Tensor:
    """``logits`` [B, V] with each row's ``min_tokens`` mask, logit bias, penalties and grammar mask
    (its ``Sequence.constraint``) applied, in that order (a copy); ``logits`` itself, untouched,
    when no row asks for any of them."""
    rows = [i for i, s in enumerate(seqs) if s.params.adjusts_logits]
    if not rows:
        return logits
    logits = logits.clone()
    _mask_stop_tokens(logits, [(i, seqs[i]) for i in rows], eos_token_ids)
    _add_logit_bias(logits, [(i, seqs[i].params) for i in rows])
    penalized = [i for i in rows if _penalizes(seqs[i].params)]
    if penalized:
        index = torch.tensor(penalized, device=logits.device)
        logits[index] = _apply_penalties(logits[index], [seqs[i] for i in penalized])
    constraints = [s.constraint for s in seqs]
    if any(c is not None for c in constraints):
        from engine.grammar import apply_masks  # llguidance: only when a request has a grammar

        apply_masks(logits, constraints)
    return logits


def sampling_probs(logits: torch.Tensor, params: list[SamplingParams]) -> torch.Tensor:
    """The distribution random rows draw from: ``logits`` [R, V] over temperature, then min-p,
    top-k and top-p (each skipped when no row uses it)."""
    temps, top_k, top_p, min_p = zip(*[(p.temperature, p.top_k, p.top_p, p.min_p) for p in params])
    logits = logits / _column(temps, logits.device)
    if any(min_p):
        probs = logits.softmax(dim=-1)
        threshold = _column(min_p, logits.device) * probs.amax(dim=-1, keepdim=True)
        logits = logits.masked_fill(probs < threshold, float("-inf"))  # the top token always stays
    if any(0 < k < logits.shape[-1] for k in top_k) or any(p < 1.0 for p in top_p):
        logits = _apply_top_k_top_p(logits, top_k, top_p)
    return torch.softmax(logits, dim=-1)


def score_tokens(logits: torch.Tensor, token_ids: list[int], num_top: int) -> list[TokenLogprobs]:
    """Row i of ``logits`` [N, V] scores ``token_ids[i]``: its log-probability under the raw
    distribution (log-softmax) and the ``num_top`` most likely tokens. Prompt logprobs."""
    chosen, top_vals, top_ids = _gather_logprobs(logits, token_ids, num_top)
    return [
        TokenLogprobs(token_id=t, logprob=lp, top=dict(zip(ids, vals)))
        for t, lp, ids, vals in zip(token_ids, chosen.tolist(), top_ids.tolist(), top_vals.tolist())
    ]


def _penalizes(p: SamplingParams) -> bool:
    return bool(p.presence_penalty or p.frequency_penalty or p.repetition_penalty != 1.0)


def _mask_stop_tokens(
    logits: torch.Tensor, rows: list[tuple[int, Sequence]], eos_token_ids: Collection[int]
) -> None:
    """In place: rows short of ``min_tokens`` outputs cannot sample a stop token (or an EOS id,
    unless they ignore EOS, which then does not stop them anyway)."""
    vocab = logits.shape[-1]
    row_index: list[int] = []
    token_index: list[int] = []
    for i, seq in rows:
        p = seq.params
        if seq.num_output_tokens >= p.min_tokens:
            continue
        stops = set(p.stop_token_ids) if p.ignore_eos else set(p.stop_token_ids) | set(eos_token_ids)
        stops = [t for t in stops if t < vocab]
        row_index += [i] * len(stops)
        token_index += stops
    if row_index:
        logits[_index(row_index, logits.device), _index(token_index, logits.device)] = float("-inf")


def _add_logit_bias(logits: torch.Tensor, rows: list[tuple[int, SamplingParams]]) -> None:
    """In place: add each row's ``logit_bias`` (token ids checked < vocab by the engine)."""
    pairs = [(i, token, bias) for i, p in rows for token, bias in p.logit_bias]
    if not pairs:
        return
    row_index, token_index, biases = zip(*pairs)
    dev = logits.device
    bias = torch.tensor(biases, dtype=logits.dtype, device=dev)
    logits.index_put_((_index(row_index, dev), _index(token_index, dev)), bias, accumulate=True)


def _apply_penalties(logits: torch.Tensor, seqs: list[Sequence]) -> torch.Tensor:
    """Repetition penalty over the prompt and output tokens, then frequency and presence over
    the output tokens only, with counts built by scatter over padded token tensors."""
    vocab, dev = logits.shape[-1], logits.device
    params = [s.params for s in seqs]
    outputs = _padded([torch.tensor(s.output_token_ids, dtype=torch.long) for s in seqs], vocab, dev)
    counts = torch.zeros(len(seqs), vocab + 1, device=dev)
    counts = counts.scatter_add_(1, outputs, torch.ones(outputs.shape, device=dev))[:, :vocab]
    if any(p.repetition_penalty != 1.0 for p in params):
        empty = torch.empty(0, dtype=torch.long)
        prompts = [s.prompt_tensor() if p.repetition_penalty != 1.0 else empty for s, p in zip(seqs, params)]
        seen = torch.zeros(len(seqs), vocab + 1, dtype=torch.bool, device=dev)
        seen = seen.scatter_(1, _padded(prompts, vocab, dev), True)[:, :vocab] | (counts > 0)
        rep = _column([p.repetition_penalty for p in params], dev)
        logits = torch.where(seen, torch.where(logits > 0, logits / rep, logits * rep), logits)
    frequency = _column([p.frequency_penalty for p in params], dev)
    presence = _column([p.presence_penalty for p in params], dev)
    return logits - frequency * counts - presence * (counts > 0)


def _padded(rows: list[torch.Tensor], pad: int, device: torch.device) -> torch.Tensor:
    """1-D CPU token tensors as one [R, longest] tensor on ``device``, padded with ``pad``."""
    return pad_sequence(rows, batch_first=True, padding_value=pad).to(device)


def _column(values: Seq[float], device: torch.device) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32, device=device).unsqueeze(1)


def _index(values: Seq[int], device: torch.device) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.long, device=device)


def _apply_top_k_top_p(logits: torch.Tensor, top_k: Seq[int], top_p: Seq[float]) -> torch.Tensor:
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


def _gather_logprobs(
    logits: torch.Tensor, token_ids: Seq[int], num_top: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(log-probability of ``token_ids[i]`` under row i [N], top ``num_top`` values and ids [N, num_top])."""
    logp = torch.log_softmax(logits, dim=-1)
    chosen = logp.gather(1, _index(token_ids, logp.device).unsqueeze(1)).squeeze(1)
    top_vals, top_ids = logp.topk(num_top, dim=-1)
    return chosen, top_vals, top_ids


def _logprobs(
    logits: torch.Tensor, tokens: list[int], params: list[SamplingParams]
) -> list[TokenLogprobs | None]:
    wanted = [i for i, p in enumerate(params) if p.logprobs is not None]
    out: list[TokenLogprobs | None] = [None] * len(params)
    if not wanted:
        return out
    chosen_tokens = [tokens[i] for i in wanted]
    max_n = max(params[i].logprobs for i in wanted)
    chosen, top_vals, top_ids = _gather_logprobs(logits[wanted], chosen_tokens, max_n)
    rows = zip(wanted, chosen_tokens, chosen.tolist(), top_ids.tolist(), top_vals.tolist())
    for i, token, lp, ids, vals in rows:
        n = params[i].logprobs
        out[i] = TokenLogprobs(token_id=token, logprob=lp, top=dict(zip(ids[:n], vals[:n])))
    return out
