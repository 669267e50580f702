"""Mooncake trace rows → benchmark requests: which rows, and the token ids each one sends.

Every 512-token block id becomes a fixed pseudo-random run of ``Scale.block_tokens`` token ids
seeded by the id, so requests that share leading ids share a prompt prefix; lengths, outputs and
arrival times are scaled by ``Scale`` (see ``bench.serve``'s docstring for the defaults and why).
"""

from __future__ import annotations

import argparse
import collections
import random
from dataclasses import dataclass

TRACE_BLOCK_TOKENS = 512
FIRST_TOKEN_ID = 100  # stay clear of the special tokens at the start of the vocabulary


@dataclass(frozen=True)
class Scale:
    block_tokens: int
    output_scale: float
    max_output_tokens: int
    max_prompt_blocks: int
    time_scale: float

    @property
    def token_scale(self) -> float:
        return self.block_tokens / TRACE_BLOCK_TOKENS


@dataclass(frozen=True)
class BenchRequest:
    index: int  # line in the trace
    arrival_s: float
    prompt: list[int]
    max_tokens: int


def select(rows: list[dict], args: argparse.Namespace) -> list[tuple[int, dict]]:
    if args.select == "window":
        return list(enumerate(rows))[args.start : args.start + args.num_requests]
    conversations: dict[int, list[int]] = collections.OrderedDict()
    for i, row in enumerate(rows[: args.scan]):
        if len(row["hash_ids"]) > 1:
            conversations.setdefault(row["hash_ids"][1], []).append(i)
    skip = getattr(args, "skip_conversations", 0)
    chosen = [c for c in conversations.values() if len(c) > 1][skip : skip + args.num_conversations]
    return [(i, rows[i]) for i in sorted(i for c in chosen for i in c)]


def build_requests(
    picked: list[tuple[int, dict]], scale: Scale, vocab_size: int, seed: int
) -> list[BenchRequest]:
    runs: dict[int, list[int]] = {}

    def run(hash_id: int) -> list[int]:
        if hash_id not in runs:
            rng = random.Random(seed * 1_000_003 + hash_id)
            runs[hash_id] = [rng.randrange(FIRST_TOKEN_ID, vocab_size) for _ in range(scale.block_tokens)]
        return runs[hash_id]

    t0 = picked[0][1]["timestamp"]
    out = []
    for index, row in picked:
        ids = row["hash_ids"][: scale.max_prompt_blocks]
        length = min(max(1, round(row["input_length"] * scale.token_scale)), len(ids) * scale.block_tokens)
        prompt = [t for h in ids for t in run(h)][:length]
        max_tokens = min(scale.max_output_tokens, max(2, round(row["output_length"] / scale.output_scale)))
        arrival = (row["timestamp"] - t0) / 1000 / scale.time_scale
        out.append(BenchRequest(index, arrival, prompt, max_tokens))
    return out


def ideal_hit_rate(requests: list[BenchRequest]) -> float:
    """Token-weighted prefix-hit ratio with an infinite cache that keeps every prefix (a trie)."""
    root: dict = {}
    hit = total = 0
    for r in requests:
        node, cached = root, True
        for t in r.prompt:
            cached = cached and t in node
            hit += cached
            node = node.setdefault(t, {})
        total += len(r.prompt)
    return hit / max(1, total)
