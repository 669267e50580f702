"""The step's last stage: which rows sample, the prompt logprobs they score, appending a sampled
token (advancing the sequence's grammar) and deciding whether the sequence stops."""

from __future__ import annotations

from collections.abc import Collection

import torch

from engine.sampler import score_tokens
from engine.scheduler import ScheduledBatch
from engine.sequence import Sequence
from engine.types import TokenLogprobs


def logit_rows(batch: ScheduledBatch) -> tuple[list[int], dict[int, range]]:
    """The rows that sample this step (they run their last token), and for rows asking for prompt
    logprobs, the positions this step runs whose logits score a prompt token not scored yet."""
    sample_rows: list[int] = []
    prompt_positions: dict[int, range] = {}
    for i, (seq, n) in enumerate(zip(batch.seqs, batch.num_new_tokens)):
        end = seq.num_computed_tokens + n
        if end == seq.num_tokens:
            sample_rows.append(i)
        if seq.prompt_logprobs is not None:
            # Position p's logits score prompt token p + 1; entries so far cover tokens [0, len).
            first = max(seq.num_computed_tokens, len(seq.prompt_logprobs) - 1)
            stop = min(end, seq.num_prompt_tokens - 1)
            if first < stop:
                prompt_positions[i] = range(first, stop)
    return sample_rows, prompt_positions


def score_prompt(seq: Sequence, positions: range, logits: torch.Tensor) -> None:
    """Append the prompt logprobs that ``logits`` (one row per position) give ``seq``."""
    assert seq.prompt_logprobs is not None and positions.start == len(seq.prompt_logprobs) - 1
    targets = seq.token_ids[positions.start + 1 : positions.stop + 1]
    seq.prompt_logprobs.extend(score_tokens(logits, targets, seq.params.prompt_logprobs))


def append_token(seq: Sequence, token: int, logprobs: TokenLogprobs | None) -> None:
    """Append a token sampled for ``seq`` and advance its grammar by it. The sampler masked what the
    grammar forbids, so a refusal here is broken internal state: ``RuntimeError``."""
    if seq.constraint is not None:
        try:
            seq.constraint.accept(token)
        except ValueError as e:
            raise RuntimeError(f"request {seq.request_id!r} sampled a token its grammar masked: {e}") from e
    seq.token_ids.append(token)
    if logprobs is not None:
        seq.logprobs.append(logprobs)


def stop_reason(seq: Sequence, token: int, eos_token_ids: Collection[int], max_model_len: int) -> str | None:
    """Why ``seq`` stops after appending ``token``, or None if it goes on. A grammar that has ended
    stops it at once ("stop"): the only token left to generate would be EOS."""
    params = seq.params
    if not params.ignore_eos and token in eos_token_ids:
        return "stop"
    if token in params.stop_token_ids or (seq.constraint is not None and seq.constraint.is_finished):
        return "stop"
    if seq.num_output_tokens >= params.max_tokens or seq.num_tokens >= max_model_len:
        return "length"
    if seq.prefill_only:
        return "prefilled"
    return None
