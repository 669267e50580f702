"""Fixtures: a slice of the shared conversation trace, and a small profile with round numbers."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest

from router.conductor.profile import parse_profile

TRACES = Path(__file__).resolve().parents[3] / "shared" / "traces"

# Round numbers, so expected times are computed by hand in the tests.
SMALL_PROFILE = {
    "name": "small",
    "prefill": {"fixed_s": 0.01, "per_token_s": 0.001, "per_token_context_s": 0.0, "max_batched_tokens": 1000},
    "decode": {"base_s": 0.02, "per_seq_s": 0.005, "per_context_token_s": 0.0, "max_num_seqs": 8},
    "kv": {"bytes_per_token": 1000, "chunk_tokens": 100, "cache_tokens_per_instance": 10000, "store_tokens_per_node": 10000},
    "fetch": {"latency_s": 0.001, "bytes_per_s": 1e8},
    "handoff": {"latency_s": 0.002, "bytes_per_s": 1e9},
    "slo": {"ttft_s": 10.0, "tbt_s": 1.0},
}  # fmt: skip


@pytest.fixture
def small_profile():
    return parse_profile(SMALL_PROFILE)


@pytest.fixture(scope="session")
def trace_slice(tmp_path_factory) -> Path:
    """The conversation trace's first 300 requests, as a file."""
    path = tmp_path_factory.mktemp("trace") / "conversation_300.jsonl"
    with open(TRACES / "conversation_trace.jsonl") as src:
        path.write_text("".join(itertools.islice(src, 300)))
    assert len(path.read_text().splitlines()) == 300
    json.loads(path.read_text().splitlines()[0])
    return path
