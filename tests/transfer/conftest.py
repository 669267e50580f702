"""Fixtures: a request/reply server on a thread, and peer processes that tests can kill."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from transfer import Buffer, Incoming, Message, ReplyServer, SocketOptions
from transfer.messages import GetReply, GetRequest, StatsReply, StatsRequest

REPO = Path(__file__).resolve().parents[2]


def echo(request: Incoming) -> Message | None:
    """Stats → a fixed StatsReply; Get → each key echoed back as its buffer (b"slow": after 0.5 s)."""
    message = request.message
    if isinstance(message, StatsRequest):
        return StatsReply("echo", 0, 0, 0, 0, 0, 0, 0, 0, 0)
    if isinstance(message, GetRequest):
        if b"slow" in message.keys:
            time.sleep(0.5)
        return GetReply(tuple(True for _ in message.keys), tuple(Buffer.raw(k) for k in message.keys))
    return None  # anything else goes unanswered


class ThreadServer:
    """A ``ReplyServer`` served on a background thread; an exception there fails the test."""

    def __init__(self, handler: Callable[[Incoming], Message | None], opts: SocketOptions | None) -> None:
        self._handler, self._opts = handler, opts
        self._ready, self._stop = threading.Event(), threading.Event()
        self._error: BaseException | None = None
        self.num_served = 0
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        assert self._ready.wait(5), "server thread did not start"

    def _run(self) -> None:
        try:
            server = ReplyServer("tcp://127.0.0.1:0", opts=self._opts)
            self.address = server.address
            self._ready.set()
            while not self._stop.is_set():
                request = server.recv(0.02)
                if request is not None:
                    self.num_served += 1
                    reply = self._handler(request)
                    if reply is not None:
                        server.reply(request, reply)
            server.close()
        except BaseException as e:
            self._error = e
            self._ready.set()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        if self._error is not None:
            raise self._error


@pytest.fixture
def serve() -> Iterator[Callable[..., ThreadServer]]:
    servers: list[ThreadServer] = []

    def start(handler=echo, opts: SocketOptions | None = None) -> ThreadServer:
        servers.append(ThreadServer(handler, opts))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


@pytest.fixture
def spawn_peer() -> Iterator[Callable[..., subprocess.Popen]]:
    """``spawn_peer(mode, *args)``: a ``tests.transfer.peers`` process, killed by PID at teardown."""
    procs: list[subprocess.Popen] = []

    def spawn(*args: str) -> subprocess.Popen:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.transfer.peers", *args],
            cwd=REPO,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            text=True,
        )
        procs.append(proc)
        return proc

    yield spawn
    for proc in procs:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
