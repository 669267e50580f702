"""Helpers to run cluster roles as direct child processes of the test, stopped by PID."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

from worker.registry import WorkerRegistry


def spawn(module: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", module, *args], stdin=subprocess.DEVNULL)


def stop(procs: list[subprocess.Popen], timeout_s: float = 10.0) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def wait_for_workers(
    redis_url: str, ids: set[str], procs: list[subprocess.Popen], timeout_s: float = 120
) -> dict:
    registry = WorkerRegistry(redis_url)
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            live = {w.info.worker_id: w for w in registry.live()}
            if ids <= set(live):
                return live
            for p in procs:
                assert p.poll() is None, f"{p.args} exited with {p.returncode}"
            assert time.monotonic() < deadline, f"workers {ids - set(live)} never registered"
            time.sleep(0.2)
    finally:
        registry.close()
