"""Store node processes for tests (and a node in a thread of the test's own), and polling with a
deadline."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from kvstore.client import StoreClient
from kvstore.config import StoreNodeConfig
from kvstore.index import StoreIndex
from kvstore.node import StoreNode

REPO = Path(__file__).resolve().parents[2]
TTL_S = 1.5  # short leases so that fault tests finish quickly


class NodeProcess:
    """A store node running as ``python -m kvstore.node_main`` in its own process."""

    def __init__(self, redis_url: str, node_id: str, argv: list[str], log_path: Path) -> None:
        self.node_id = node_id
        self.redis_url = redis_url
        self.log_path = log_path
        self.address: str | None = None  # set once registered
        with log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "kvstore.node_main",
                    "--redis-url",
                    redis_url,
                    "--node-id",
                    node_id,
                    *argv,
                ],
                cwd=REPO,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait_registered(self, timeout_s: float = 15.0) -> str:
        """Wait until the node is live in the index; returns its address."""
        index = StoreIndex(self.redis_url)
        deadline = time.monotonic() + timeout_s
        try:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    break
                live = {n.node_id: n for n in index.nodes()}
                if self.node_id in live:
                    return live[self.node_id].address
                time.sleep(0.05)
        finally:
            index.close()
        self.stop()
        raise AssertionError(f"store node {self.node_id} did not register; its log:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def kill(self) -> None:
        """SIGKILL: a crash, no deregistration."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def stop(self, timeout_s: float = 10.0) -> int:
        """SIGTERM (a clean shutdown), SIGKILL if it lingers; returns the exit code."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.proc.returncode


def wait_until(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    """Poll ``predicate`` until true; fail naming ``what`` after ``timeout_s`` (a deadline, not a timing)."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.05)


@contextlib.contextmanager
def node_in_thread(redis_url: str, node_id: str, capacity_bytes: int = 64 << 20) -> Iterator[StoreNode]:
    """A registered store node served from a thread of this process, so a test can reach into its
    arena (to corrupt bytes at rest); stopped and deregistered on exit."""
    node = StoreNode(StoreNodeConfig(node_id=node_id, listen="tcp://127.0.0.1:0", redis_url=redis_url,
                                     capacity_bytes=capacity_bytes))  # fmt: skip
    stop = threading.Event()
    thread = threading.Thread(target=node.serve, args=(stop,), name=node_id)
    thread.start()
    client = StoreClient(redis_url)
    try:
        wait_until(lambda: node_id in {n.node_id for n in client.nodes()}, 10, f"{node_id} to register")
        yield node
    finally:
        client.close()
        stop.set()
        thread.join(timeout=10)
