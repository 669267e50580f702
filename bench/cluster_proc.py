"""``tandem up`` as a child process of a benchmark, and the small HTTP helpers around it.

Benchmarks may not import ``cluster`` (nothing does: it is the composition root), so they drive it
the way a user does: through its command line.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class ClusterSpec:
    name: str
    mode: str
    policy: str
    num_prefill: int
    num_decode: int
    up_args: tuple[str, ...] = ()  # more `tandem up` flags


def default_model_dir() -> str:
    """Ask the CLI (which owns model resolution and the cache) for the default model's directory."""
    out = subprocess.run(
        [sys.executable, "-m", "cluster.cli", "convert", "--default"],
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.strip().splitlines()[-1]


def http_get(url: str, timeout_s: float = 5.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout_s) as r:
        return r.read().decode()


class Cluster:
    """``tandem up`` in its own session, its output in ``log_path``; ``stop()`` sends SIGTERM to
    its PID (it stops its own children), and kills its process group only if it outlives the grace."""

    def __init__(self, spec: ClusterSpec, model_dir: str, num_pages: int, log_path: Path) -> None:
        self.url = ""  # known once it serves: `tandem up --port 0` prints where
        self.log_path = log_path
        cmd = [sys.executable, "-m", "cluster.cli", "up", "--model", model_dir, "--port", "0",
               "--prefill", str(spec.num_prefill), "--mode", spec.mode, "--policy", spec.policy,
               "--num-pages", str(num_pages)]  # fmt: skip
        if spec.mode == "disaggregated":
            cmd += ["--decode", str(spec.num_decode)]
        cmd += list(spec.up_args)
        self._log = open(log_path, "w")  # noqa: SIM115 (closed in stop)
        self.popen = subprocess.Popen(
            cmd,
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait_healthy(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            if self.popen.poll() is not None:
                raise RuntimeError(
                    f"`tandem up` exited with code {self.popen.returncode}; see {self.log_path}"
                )
            if not self.url:
                served = re.search(r"Tandem is serving \S+ at (http://\S+)/v1", self.log_path.read_text())
                self.url = served.group(1) if served else ""
            try:
                if self.url:
                    http_get(f"{self.url}/ready", timeout_s=1.0)
                    return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"cluster not healthy after {timeout_s:.0f}s; see {self.log_path}")
            time.sleep(0.5)

    def stop(self, grace_s: float = 150.0) -> None:
        """SIGTERM: ``tandem up`` drains router, workers, store nodes, Redis in turn (each stage
        bounded by its drain timeout); past ``grace_s`` it and its children (each in a session of
        its own) are killed by PID."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                for pid in children(self.popen.pid).values():
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                self.popen.kill()
                self.popen.wait()
        self._log.close()


def scrape(url: str) -> dict[str, float]:
    """Prometheus text → {'name{labels}': value} (samples only)."""
    out = {}
    for line in http_get(f"{url}/metrics").splitlines():
        m = re.match(r"^(tandem_[^\s]+)\s+(\S+)$", line)
        if m:
            out[m.group(1)] = float(m.group(2))
    return out


def children(pid: int) -> dict[str, int]:
    """``tandem up``'s child processes by role name (``prefill-0``, ``store-1``, ``router``,
    ``redis``), read from /proc."""
    out = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            argv = (stat.parent / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:  # exited meanwhile
            continue
        if int(fields[1]) != pid:  # the parent's pid is the stat file's fourth field
            continue
        name = next((argv[i + 1] for i, a in enumerate(argv[:-1]) if a in ("--worker-id", "--node-id")), None)
        if name is None:
            name = "router" if "router.main" in argv else "redis" if "redis-server" in argv[0] else argv[0]
        out[name] = int(stat.parent.name)
    return out


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0
