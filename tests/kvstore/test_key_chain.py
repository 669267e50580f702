"""The hash-chain key function: deterministic across processes, prefix-sensitive, fingerprinted."""

from __future__ import annotations

import subprocess
import sys

import pytest

from kvstore.keys import block_key, chain_keys

FP = b"fingerprint-a"


def test_only_full_blocks_get_keys():
    assert len(chain_keys(list(range(35)), 16, FP)) == 2
    assert chain_keys(list(range(15)), 16, FP) == []


def test_a_key_names_the_whole_prefix():
    a = chain_keys([1] * 16 + [2] * 16, 16, FP)
    b = chain_keys([3] * 16 + [2] * 16, 16, FP)
    assert a[1] != b[1], "same block after different prefixes must differ"
    assert chain_keys([1] * 16 + [2] * 16 + [7] * 5, 16, FP) == a


def test_fingerprint_separates_models():
    assert chain_keys([1] * 16, 16, FP) != chain_keys([1] * 16, 16, b"fingerprint-b")


def test_chain_continues_from_a_previous_key():
    tokens = list(range(64))
    full = chain_keys(tokens, 16, FP)
    assert chain_keys(tokens[32:], 16, FP, prev_key=full[1]) == full[2:]
    assert full[0] == block_key(None, tokens[:16], FP)


def test_keys_are_identical_in_another_process():
    code = "from kvstore.keys import chain_keys; print(chain_keys(list(range(40)), 8, b'fingerprint-a')[-1].hex())"
    other = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert other == chain_keys(list(range(40)), 8, FP)[-1].hex()


def test_block_size_must_be_positive():
    with pytest.raises(ValueError, match="block_tokens"):
        chain_keys([1, 2], 0, FP)
