"""Graceful stops lose nothing, on a real ``tandem up`` (a child process of the test: Redis, store
nodes, 1 prefill + 2 decode workers, the router; default model).

Tests run in file order on one cluster: a decode worker sent SIGTERM mid-stream finishes its
streams and exits 0 while new requests go to the other one; then ``tandem up`` sent SIGINT (a
terminal's Ctrl-C) finishes every request it accepted and exits 0, quietly."""

from __future__ import annotations

import collections
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time

import pytest
import requests

from tests.kvstore.procs import wait_until

pytestmark = pytest.mark.slow

STARTED = re.compile(r"started (\S+) \(pid (\d+)\)")


class TandemUp:
    """``tandem up`` with its output (its children's included) collected line by line."""

    def __init__(self, *args: str) -> None:
        env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"} | {"TANDEM_LOG_LEVEL": "INFO"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cluster.cli", "up", *args], stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        )  # fmt: skip
        self.out: list[str] = []
        self.err: list[str] = []
        self._readers = [
            threading.Thread(target=self._read, args=(stream, lines), daemon=True)
            for stream, lines in ((self.proc.stdout, self.out), (self.proc.stderr, self.err))
        ]
        for reader in self._readers:
            reader.start()

    @staticmethod
    def _read(stream, lines: list[str]) -> None:
        for line in stream:
            lines.append(line.rstrip("\n"))

    def wait_for(self, pattern: str, lines: list[str] | None = None, timeout_s: float = 180.0) -> re.Match:
        """The first line of stderr (or ``lines``) matching ``pattern``, once there is one."""
        regex, lines = re.compile(pattern), self.err if lines is None else lines
        deadline = time.monotonic() + timeout_s
        while True:
            for line in list(lines):
                if found := regex.search(line):
                    return found
            assert self.proc.poll() is None or time.monotonic() < deadline, f"tandem up exited: {self.tail()}"
            assert time.monotonic() < deadline, f"no line matches {pattern!r}: {self.tail()}"
            time.sleep(0.1)

    def pids(self) -> dict[str, int]:
        """Every child it started, by name (the latest start of each)."""
        return {m[1]: int(m[2]) for line in list(self.err) if (m := STARTED.search(line))}

    def tail(self) -> str:
        return "\n".join(self.err[-30:])

    def stop(self) -> None:
        """Stop it (it stops its children); if it must be killed, kill its children by PID too."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=90)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                for pid in self.pids().values():
                    if pid_alive(pid):
                        os.kill(pid, signal.SIGKILL)
        for reader in self._readers:
            reader.join(timeout=5)


class Stream:
    """One streaming completion read in a thread of its own."""

    def __init__(self, url: str, model: str, max_tokens: int) -> None:
        body = {"model": model, "prompt": "Count slowly:", "max_tokens": max_tokens, "temperature": 0,
                "stream": True, "ignore_eos": True, "stream_options": {"include_usage": True}}  # fmt: skip
        self.resp = requests.post(f"{url}/v1/completions", json=body, stream=True, timeout=120)
        assert self.resp.status_code == 200, self.resp.text
        self.decode = self.resp.headers["x-tandem-decode"]
        self.first_token = threading.Event()
        self.decoding = threading.Event()  # a token from the decode worker arrived (the second)
        self.num_chunks = 0
        self.finish_reason: str | None = None
        self.completion_tokens = 0
        self.errors: list[str] = []
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        try:
            for line in self.resp.iter_lines(decode_unicode=True):
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line.removeprefix("data: "))
                if "error" in chunk:
                    self.errors.append(line)
                for choice in chunk.get("choices", []):
                    self.num_chunks += 1
                    self.first_token.set()
                    if self.num_chunks >= 2:
                        self.decoding.set()
                    self.finish_reason = choice.get("finish_reason") or self.finish_reason
                if chunk.get("usage"):
                    self.completion_tokens = chunk["usage"]["completion_tokens"]
        finally:
            self.first_token.set()
            self.decoding.set()

    def result(self, timeout_s: float = 120.0) -> tuple[str | None, int, list[str]]:
        self.thread.join(timeout=timeout_s)
        assert not self.thread.is_alive(), "the stream did not end"
        return self.finish_reason, self.completion_tokens, self.errors


def open_streams(url: str, model: str, n: int, max_tokens: int) -> list[Stream]:
    """``n`` streams opened at once (their workers are known)."""
    with futures_pool(n) as pool:
        return list(pool.map(lambda _: Stream(url, model, max_tokens), range(n)))


def started(streams: list[Stream]) -> None:
    """Wait until each stream has received its first tokens."""
    for s in streams:
        assert s.first_token.wait(60), "no first token"
        assert not s.errors, s.errors


def futures_pool(n: int):
    import concurrent.futures

    return concurrent.futures.ThreadPoolExecutor(n)


def health(url: str) -> dict:
    try:
        return requests.get(f"{url}/health", timeout=5).json()
    except requests.RequestException:
        return {}


@pytest.fixture(scope="module")
def up():
    cluster = TandemUp("--port", "0", "--prefill", "1", "--decode", "2", "--policy", "round_robin",
                       "--num-pages", "256", "--store-capacity", str(64 << 20))  # fmt: skip
    try:
        serving = cluster.wait_for(r"Tandem is serving \S+ at (\S+)/v1", cluster.out)
        cluster.url = serving[1]
        cluster.model = requests.get(f"{cluster.url}/v1/models", timeout=10).json()["data"][0]["id"]
        yield cluster
    finally:
        cluster.stop()


def test_sigterm_to_a_decode_worker_finishes_its_streams_and_new_requests_go_elsewhere(up):
    streams = open_streams(up.url, up.model, 8, max_tokens=32)
    victim = collections.Counter(s.decode for s in streams).most_common(1)[0][0]
    for s in streams:
        if s.decode == victim:  # mid-stream on the victim: its hand-off arrived, it streams
            assert s.decoding.wait(60) and not s.errors, s.errors
    os.kill(up.pids()[victim], signal.SIGTERM)
    held = int(up.wait_for(rf"{victim} draining: (\d+) request")[1])
    assert held >= 4, "the victim's streams were not all in flight at the signal"
    wait_until(
        lambda: health(up.url).get("workers", {}).get("decode") == 1, 60, "the router to see the drain"
    )
    for i in range(2):
        body = {"model": up.model, "prompt": f"Say {i}", "max_tokens": 4, "temperature": 0}
        resp = requests.post(f"{up.url}/v1/completions", json=body, timeout=60)
        assert resp.status_code == 200 and resp.headers["x-tandem-decode"] != victim
    for s in streams:
        assert s.result() == ("length", 32, [])
    up.wait_for(rf"{victim} drained in")
    up.wait_for(rf"{victim} \(pid \d+\) exited with code 0")


def test_sigint_to_tandem_up_finishes_every_accepted_request_and_exits_cleanly(up):
    wait_until(
        lambda: health(up.url).get("workers", {}).get("decode") == 2, 60, "the restarted decode worker"
    )
    streams = open_streams(up.url, up.model, 4, max_tokens=24)
    started(streams)
    up.proc.send_signal(signal.SIGINT)
    for s in streams:
        assert s.result() == ("length", 24, [])
    assert up.proc.wait(timeout=90) == 0
    for reader in up._readers:
        reader.join(timeout=5)
    stderr = "\n".join(up.err)
    assert "Traceback" not in stderr and " ERROR " not in stderr, up.tail()
    assert all(not pid_alive(pid) for pid in up.pids().values()), "a child outlived tandem up"


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` still runs this Python (not a PID reused since by something else)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return sys.executable.encode() in f.read()
    except OSError:
        return False
