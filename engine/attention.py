"""Per-step attention metadata: where each token's K/V goes and which pages each sequence reads."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class AttentionMetadata:
    """The flat batch of one step, decode tokens first (one per sequence), then prefill chunks.

    slots: [T] cache slot (``page * page_size + offset``) of every token's new K/V.
    decode_*: one row per decode sequence; context_lens count the new token.
    prefill_*: one row per prefill sequence; cu_seqlens_q are offsets into the prefill tokens
    (starting at 0, i.e. relative to ``num_decode_tokens``); context_lens count cached + new tokens.
    """

    slots: torch.Tensor
    num_decode_tokens: int
    decode_block_tables: torch.Tensor
    decode_context_lens: torch.Tensor
    prefill_block_tables: torch.Tensor
    prefill_cu_seqlens_q: torch.Tensor
    prefill_context_lens: torch.Tensor
