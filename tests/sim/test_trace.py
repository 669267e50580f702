"""Trace readers: Mooncake's JSONL and the synthetic chats."""

from __future__ import annotations

import json

from sim.trace import read_mooncake, rescale, synthetic_chats


def test_mooncake_rows_become_requests_with_their_cacheable_blocks(trace_slice):
    rows = [json.loads(line) for line in trace_slice.read_text().splitlines()]
    requests = read_mooncake(trace_slice, limit=50)
    assert len(requests) == 50
    for row, r in zip(rows, requests):
        assert r.arrival_s == row["timestamp"] / 1000
        assert (r.input_tokens, r.output_tokens) == (row["input_length"], max(1, row["output_length"]))
        # full blocks before the last token: 6758 tokens -> 13 of its 14 blocks, 1024 -> 1 of 2
        full = (row["input_length"] - 1) // 512
        assert r.keys == tuple(row["hash_ids"][:full])
    assert requests[0].keys == tuple(range(13))  # the trace's first row, read by eye


def test_speed_divides_arrival_times(trace_slice):
    slow = read_mooncake(trace_slice, limit=100)
    fast = read_mooncake(trace_slice, limit=100, speed=4.0)
    assert [f.arrival_s * 4 for f in fast] == [s.arrival_s for s in slow]
    assert rescale(slow, 4.0) == fast


def test_synthetic_chats_share_the_system_prompt_and_grow_each_users_history():
    requests = synthetic_chats(num_users=3, turns=4, system_blocks=2, turn_blocks=1, rate_per_s=10.0, seed=1)
    assert len(requests) == 12
    assert all(r.keys[:2] == (0, 1) for r in requests)
    arrivals = [r.arrival_s for r in requests]
    assert arrivals == sorted(arrivals)
    # a user's next turn starts with everything its last one sent: its cacheable chain extends it
    longest = max(requests, key=lambda r: r.input_tokens)
    assert longest.input_tokens == (2 + 4) * 512 and len(longest.keys) == 2 + 4 - 1
    extended = [r for r in requests if r.keys == longest.keys[: len(r.keys)] and len(r.keys) > 2]
    assert len(extended) == 3  # its own turns 2, 3 and 4
    assert sum(r.keys == (0, 1) for r in requests) == 3  # every user's first turn: the system prompt
