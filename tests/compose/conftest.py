"""The compose test is opt-in (``make compose-test``): its file is not named ``test_*.py``, so
``pytest tests`` does not collect it; this registers its marker for when it is run by name."""

from __future__ import annotations


def pytest_configure(config):
    config.addinivalue_line("markers", "compose: real containers from compose.yaml (make compose-test)")
