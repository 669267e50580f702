"""Process plumbing shared by the worker entry points: logging, signals, the loop's lifetime."""

from __future__ import annotations

import logging
import signal
import threading


def setup_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def stop_on_signals() -> threading.Event:
    """An event set by SIGTERM or SIGINT, so the serve loop can deregister and exit cleanly."""
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    return stop
