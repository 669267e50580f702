"""Request traces: Mooncake's JSONL format, and synthetic workloads for what the traces lack.

Mooncake's format (``../shared/traces/README.md``): one object a line with ``timestamp`` (ms),
``input_length``, ``output_length`` and ``hash_ids``, one id per 512-token block, prefix-chained.
A ``TraceRequest`` keeps the ids of the prompt's *cacheable* blocks: the full blocks before its
last token (Tandem always computes the last token, and caches only full chunks).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

TRACE_BLOCK_TOKENS = 512


@dataclass(frozen=True)
class TraceRequest:
    index: int
    arrival_s: float
    input_tokens: int
    output_tokens: int
    keys: tuple[int, ...]  # the cacheable blocks' ids (a key chain)


def cacheable_blocks(input_tokens: int, block_tokens: int) -> int:
    return max(0, input_tokens - 1) // block_tokens


def read_mooncake(
    path: str | Path, *, speed: float = 1.0, limit: int | None = None, block_tokens: int = TRACE_BLOCK_TOKENS
) -> list[TraceRequest]:
    """The trace's requests in arrival order, arrivals divided by ``speed``, at most ``limit``."""
    if speed <= 0:
        raise ValueError(f"speed must be positive, got {speed}")
    out = []
    with open(path) as f:
        for index, line in enumerate(f):
            if limit is not None and len(out) >= limit:
                break
            row = json.loads(line)
            n = cacheable_blocks(row["input_length"], block_tokens)
            out.append(TraceRequest(
                index, row["timestamp"] / 1000 / speed, row["input_length"], max(1, row["output_length"]),
                tuple(row["hash_ids"][:n]),
            ))  # fmt: skip
    return out


def rescale(requests: list[TraceRequest], speed: float) -> list[TraceRequest]:
    """The same requests arriving ``speed`` times faster."""
    return [
        TraceRequest(r.index, r.arrival_s / speed, r.input_tokens, r.output_tokens, r.keys) for r in requests
    ]


def synthetic_chats(
    *, num_users: int, turns: int, system_blocks: int, turn_blocks: int, rate_per_s: float,
    output_tokens: int = 200, seed: int = 0, block_tokens: int = TRACE_BLOCK_TOKENS,
) -> list[TraceRequest]:  # fmt: skip
    """Many-turn chats behind one shared system prompt: each user's turn ``t`` sends the system
    prompt, the whole conversation so far and a new message (``turn_blocks`` blocks a turn).
    Arrivals are Poisson at ``rate_per_s``; a user's turns keep their order."""
    rng = random.Random(seed)
    system = list(range(system_blocks))
    next_id = system_blocks
    histories = {u: list(system) for u in range(num_users)}
    pending = [u for u in range(num_users) for _ in range(turns)]
    rng.shuffle(pending)
    t, out = 0.0, []
    for index, user in enumerate(pending):
        t += rng.expovariate(rate_per_s)
        histories[user] += list(range(next_id, next_id + turn_blocks))
        next_id += turn_blocks
        input_tokens = len(histories[user]) * block_tokens
        keys = tuple(histories[user][: cacheable_blocks(input_tokens, block_tokens)])
        out.append(TraceRequest(index, t, input_tokens, output_tokens, keys))
    return out
