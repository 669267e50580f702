"""The router's HTTP server: uvicorn's, draining on SIGTERM / SIGINT.

The first signal sets ``app.state.draining`` at once (``/ready`` answers 503 from then, so a load
balancer stops sending here), closes the listening socket (no new connection is accepted) and gives
the requests in flight up to ``timeout_graceful_shutdown`` seconds to finish; the app's lifespan
then shuts down. A second signal stops at once. The process exits normally afterwards: uvicorn
itself would raise the signal again once it is done (a ``KeyboardInterrupt`` traceback for SIGINT,
death by signal for SIGTERM), which a launcher that asked for the stop must not read as a crash.
"""

from __future__ import annotations

import contextlib
import logging
import signal
from collections.abc import Iterator
from types import FrameType

import uvicorn
from fastapi import FastAPI

log = logging.getLogger(__name__)


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, app: FastAPI) -> None:
        super().__init__(config)
        self._app = app
        app.state.draining = False

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        name = signal.Signals(sig).name
        self._app.state.draining = True
        if self.should_exit:
            log.warning("%s again: stopping at once", name)
            self.force_exit = True
        else:
            log.info("%s: draining; no new connections, %d request(s) in flight get up to %g s to finish",
                     name, len(self.server_state.tasks), self.config.timeout_graceful_shutdown)  # fmt: skip
        super().handle_exit(sig, frame)

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        with super().capture_signals():
            yield
            self._captured_signals.clear()  # the stop was asked for and done: nothing to raise again
