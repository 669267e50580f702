"""``make compose-test``: compose.yaml on real containers (see ``tests/compose/run.py``).

Run by name, never collected by ``pytest tests``:
    python -m pytest -s -m compose tests/compose/check_compose.py
"""

from __future__ import annotations

import pytest

from tests.compose import run


@pytest.mark.compose
def test_compose_serves_end_to_end():
    assert run.main([]) == 0
