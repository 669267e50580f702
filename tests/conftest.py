"""Fixtures shared across packages."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def default_model() -> Path:
    """The converted SmolLM2-135M-Instruct directory (converted on first use, then cached)."""
    from cluster.models import resolve_model

    return resolve_model(None)
