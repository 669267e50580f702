"""Every environment variable Tandem reads, typed and defaulted, in one place."""

from __future__ import annotations

import os
from pathlib import Path


def _str(name: str, default: str | None) -> str | None:
    value = os.environ.get(name)
    return value if value not in (None, "") else default


CACHE_DIR = Path(_str("TANDEM_CACHE_DIR", str(Path.home() / ".cache" / "tandem")))
"""Where converted models (and other one-time artifacts) live."""

MODEL = _str("TANDEM_MODEL", None)
"""An HF model directory to serve instead of the default SmolLM2-135M-Instruct."""

REDIS_URL = _str("REDIS_URL", None)
"""An external Redis; unset means an embedded redis-server is started."""

LOG_LEVEL = _str("TANDEM_LOG_LEVEL", "INFO")

API_KEY = _str("TANDEM_API_KEY", None)
"""The key clients must send the router (``Authorization: Bearer``); unset means none."""
