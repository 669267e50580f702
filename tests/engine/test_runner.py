"""The runner's step inputs: which KV slot each scheduled token writes."""

import random

import pytest

from engine.runner import _extend_slots


@pytest.mark.parametrize("page_size", [1, 2, 16, 32])
def test_slots_follow_the_block_table_across_page_boundaries(page_size):
    rng = random.Random(page_size)
    for _ in range(300):
        start, n = rng.randint(0, 100), rng.randint(1, 150)
        table = rng.sample(range(10_000), -(-(start + n) // page_size))
        slots = [-1]  # appends after what is there
        _extend_slots(slots, table, start, start + n, page_size)
        # position p lives at offset p % page_size of page table[p // page_size]
        expected = [table[p // page_size] * page_size + p % page_size for p in range(start, start + n)]
        assert slots == [-1, *expected]
        assert len(set(slots[1:])) == n  # no two positions share a slot
