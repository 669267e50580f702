"""A whole Tandem cluster on one machine, every server a direct child process of this one.

Start order: Redis (embedded unless a URL is given) → the workers, each after its own store node
(disaggregated mode: prefill workers write their prompts' chunks there, decode workers the chunks
they generate) → the router. Every child runs in a session of its own, so a terminal's Ctrl-C
reaches this process only, which then stops them in order. ``stop()`` drains and loses no request
it accepted: it terminates the router first and waits while it finishes what is in flight, then
the workers (each finishes what it holds, see ``worker.drain``), then the store nodes, then Redis;
all by PID, each stage bounded, killing what outlives its grace, so nothing is orphaned. While it
serves, ``supervise()`` restarts whatever dies. Every child gets the cluster key that seals its
ZeroMQ messages (``transfer.auth``). Each worker gets a share of the CPU cores as torch threads so
that the processes together do not oversubscribe the machine.
"""

from __future__ import annotations

import functools
import logging
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from cluster import env
from kvstore.embedded_redis import EmbeddedRedis
from kvstore.index import redacted
from transfer import auth
from worker.registry import WorkerRegistry

log = logging.getLogger("tandem.up")


WORKER_PAGE_SIZE = 16  # the engine's default --page-size, which `tandem up` keeps
KV_CAP_BYTES = 4 << 30  # per worker, when `tandem up` sizes the KV caches
# A worker's step token budget unless --max-num-batched-tokens says otherwise. Colocated: vLLM's CPU
# `serve` default (the system it is measured against): prompts that arrive together share a step,
# and their streams then decode undisturbed. A prefill worker hands each prompt on as its step ends,
# so shorter steps let its decode worker start on the first prompts while it prefills the rest.
DEFAULT_STEP_TOKENS = {"colocated": 2048, "disaggregated": 512}


@dataclass(frozen=True)
class ClusterConfig:
    model_dir: Path
    num_prefill: int = 1
    num_decode: int = 1
    mode: str = "disaggregated"  # or "colocated": num_prefill workers that do both
    policy: str = "cache_aware"
    host: str = "127.0.0.1"
    port: int = 8000
    redis_url: str | None = None
    store_capacity_bytes: int = 1 << 30
    store_disk_path: Path | None = None  # each node's disk tier in <path>/<node id>; None: none
    store_disk_capacity_bytes: int = 0
    store_replicate_after: int = 0  # each node copies a chunk fetched more often than this (0: never)
    chunk_tokens: int = 64
    kv_dtype: str = "auto"  # KV as workers hand it over and store it: "auto" (float32) | "int8"
    num_pages: int | None = None
    kv_cache_memory_bytes: int | None = None  # per worker; None: default_kv_budget (num_pages wins)
    # Token budget of one engine step; None: by mode (``DEFAULT_STEP_TOKENS``).
    max_num_batched_tokens: int | None = None
    api_key: str | None = None  # the router's (passed in its environment, not on its command line)
    extra_worker_args: tuple[str, ...] = ()
    extra_router_args: tuple[str, ...] = ()
    startup_timeout_s: float = 180.0
    drain_timeout_s: float = 30.0  # the router's and each worker's (--drain-timeout-s)

    def __post_init__(self) -> None:
        if self.mode not in ("disaggregated", "colocated"):
            raise ValueError(f"mode must be 'disaggregated' or 'colocated', got {self.mode!r}")
        if self.num_prefill < 1 or (self.mode == "disaggregated" and self.num_decode < 1):
            raise ValueError("need at least one prefill and one decode worker (or one colocated worker)")
        if self.max_num_batched_tokens is not None and self.max_num_batched_tokens < 1:
            raise ValueError(f"max_num_batched_tokens must be >= 1, got {self.max_num_batched_tokens}")
        if self.drain_timeout_s <= 0:
            raise ValueError(f"drain_timeout_s must be positive, got {self.drain_timeout_s}")
        if self.kv_dtype not in ("auto", "int8"):  # engine.config.KV_DTYPES (torch-free here)
            raise ValueError(f"kv_dtype must be 'auto' or 'int8', got {self.kv_dtype!r}")
        if self.chunk_tokens < WORKER_PAGE_SIZE or self.chunk_tokens % WORKER_PAGE_SIZE:
            raise ValueError(
                f"chunk_tokens must be a positive multiple of the workers' page size {WORKER_PAGE_SIZE}, "
                f"got {self.chunk_tokens}"
            )
        if self.store_replicate_after < 0:
            raise ValueError(f"store_replicate_after must be >= 0, got {self.store_replicate_after}")
        if self.store_disk_path is not None and self.store_disk_capacity_bytes <= 0:
            raise ValueError(
                f"a store disk tier needs a positive capacity, got {self.store_disk_capacity_bytes}"
            )

    @property
    def step_tokens(self) -> int:
        """Each worker's step token budget: the one given, else the mode's default."""
        return self.max_num_batched_tokens or DEFAULT_STEP_TOKENS[self.mode]

    @property
    def num_engines(self) -> int:
        return self.num_prefill + (self.num_decode if self.mode == "disaggregated" else 0)


RESTART_BACKOFF_S = (1.0, 2.0, 4.0, 8.0, 16.0, 30.0)  # after each consecutive quick death
STABLE_AFTER_S = 60.0  # a process that ran this long starts its backoff over
# stop() stops the children in stages (lowest first), by what they run: the router, then the
# workers, then the store nodes; anything else with the workers
STOP_STAGES = {
    "router.main": 0,
    "prefill.main": 1,
    "decode.main": 1,
    "colocated.main": 1,
    "kvstore.node_main": 2,
}
STOP_MARGIN_S = 5.0  # past a child's own drain timeout, before it is killed
HURRY_RESIGNAL_S = 0.5


class StopRequested(Exception):
    """``request_stop()`` was called while the cluster was starting."""


def default_kv_budget(available: int, store_bytes: int, weights_bytes: int, num_engines: int) -> int:
    """KV bytes per worker when none is given: half of what the host has available once the store
    nodes' arenas and every engine's weights are taken, split among the engines, at most 4 GiB."""
    left = max(0, available - store_bytes - num_engines * weights_bytes)
    return min(KV_CAP_BYTES, left // 2 // num_engines)


@dataclass
class Proc:
    """A child process and how to start it again."""

    name: str
    popen: subprocess.Popen
    argv: list[str]
    env: dict[str, str] | None = None  # None: this process's environment
    started_at: float = field(default_factory=time.monotonic)
    quick_deaths: int = 0  # consecutive exits within STABLE_AFTER_S of starting
    restart_at: float | None = None  # set while it is dead and waiting out its backoff
    stage: int = 1  # when stop() stops it (STOP_STAGES)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def respawn(self) -> None:
        self.popen = _popen(self.argv, self.env)
        self.started_at, self.restart_at = time.monotonic(), None


def _popen(argv: list[str], env: dict[str, str] | None) -> subprocess.Popen:
    """A child in a session of its own: a terminal's Ctrl-C goes to ``tandem up`` alone, which
    stops the children in order (``LocalCluster.stop``)."""
    return subprocess.Popen(argv, stdin=subprocess.DEVNULL, env=env, start_new_session=True)


@dataclass
class LocalCluster:
    config: ClusterConfig
    procs: list[Proc] = field(default_factory=list)
    redis: EmbeddedRedis | None = None
    redis_url: str = ""
    port: int = 0  # the router's, once it listens (``config.port`` 0: the one it was given)
    # every child seals its ZeroMQ messages with it (transfer.auth): nobody else can talk to them
    # ($TANDEM_CLUSTER_KEY if set, so that tools run beside it can talk to the cluster)
    cluster_key: str = field(default_factory=lambda: os.environ.get(auth.ENV) or secrets.token_hex(32))
    stopping: bool = False  # request_stop() was called once: drain
    hurry: bool = False  # ... and again: stop what is draining at once

    @property
    def url(self) -> str:
        return f"http://{self.config.host}:{self.port or self.config.port}"

    def start(self) -> LocalCluster:
        try:
            self._start_redis()
            self._spawn_workers(self._worker_args())
            self._wait_for_workers()
            self._start_router()
            self._wait_for_router()
        except BaseException:
            self.stop()
            raise
        return self

    def _start_router(self) -> None:
        """The router, on ``config.port`` (0: a port it picks and reports; a restart reuses it)."""
        cfg = self.config
        port_file = Path(tempfile.mkdtemp(prefix="tandem-up-")) / "router.port"
        router = self._spawn("router", "router.main", [
            "--model", str(cfg.model_dir), "--redis-url", self.redis_url, "--host", cfg.host,
            "--port", str(cfg.port), "--port-file", str(port_file), "--policy", cfg.policy,
            "--log-level", env.LOG_LEVEL, "--drain-timeout-s", str(cfg.drain_timeout_s), *cfg.extra_router_args,
        ], env={"TANDEM_API_KEY": cfg.api_key or ""})  # fmt: skip
        self._wait_until(port_file.exists, "router did not listen", poll_s=0.05)
        self.port = int(port_file.read_text())
        shutil.rmtree(port_file.parent, ignore_errors=True)
        at = router.argv.index("--port-file")  # a restart binds the same port and need not report it
        del router.argv[at : at + 2]
        router.argv[router.argv.index("--port") + 1] = str(self.port)

    def _start_redis(self) -> None:
        if self.config.redis_url:
            self.redis_url = self.config.redis_url
        else:
            # a password of its own: only the processes started here (given the URL) can use it
            self.redis = EmbeddedRedis(password=secrets.token_urlsafe(24)).start()
            self.redis_url = self.redis.url
        log.info("redis at %s", redacted(self.redis_url))

    def _worker_args(self) -> list[str]:
        """The flags every worker gets: a share of the cores as torch threads, and the engine's."""
        cfg = self.config
        threads = max(1, (os.cpu_count() or 1) // cfg.num_engines)
        args = ["--model", str(cfg.model_dir), "--redis-url", self.redis_url, "--threads", str(threads),
                "--log-level", env.LOG_LEVEL, "--max-num-batched-tokens", str(cfg.step_tokens),
                "--drain-timeout-s", str(cfg.drain_timeout_s)]  # fmt: skip
        num_pages = cfg.num_pages or self._kv_pages_per_worker()
        if num_pages:
            args += ["--num-pages", str(num_pages)]
        if cfg.kv_dtype != "auto":
            args += ["--kv-dtype", cfg.kv_dtype]
        return args + list(cfg.extra_worker_args)

    def _kv_pages_per_worker(self) -> int | None:
        """Each worker's KV pages, fixed once for the cluster's life (so that a restarted worker gets
        what it had): ``kv_cache_memory_bytes`` each if given, else ``default_kv_budget``. None on a
        GPU host without an explicit budget (each worker sizes its cache from its device's free
        memory)."""
        import torch

        from engine.memory import available_memory_bytes

        cfg = self.config
        if cfg.kv_cache_memory_bytes is None and torch.cuda.is_available():
            return None
        page_bytes = self._kv_bytes_per_token * WORKER_PAGE_SIZE
        budget = cfg.kv_cache_memory_bytes
        if budget is None:
            weights = sum(f.stat().st_size for f in Path(cfg.model_dir).glob("*.safetensors"))
            nodes = cfg.num_engines if cfg.mode == "disaggregated" else 0
            available = available_memory_bytes(torch.device("cpu"))
            budget = default_kv_budget(available, nodes * cfg.store_capacity_bytes, weights, cfg.num_engines)
        one_context = -(
            -self._model.max_position_embeddings // WORKER_PAGE_SIZE
        )  # any admissible request fits
        num_pages = max(one_context, budget // page_bytes)
        log.info("KV cache: %d pages (%.2f GiB) per worker, %d workers", num_pages,
                 num_pages * page_bytes / (1 << 30), cfg.num_engines)  # fmt: skip
        return num_pages

    def _spawn_workers(self, common: list[str]) -> None:
        cfg = self.config
        if cfg.mode == "colocated":
            for i in range(cfg.num_prefill):
                self._spawn(f"colocated-{i}", "colocated.main", [*common, "--worker-id", f"colocated-{i}"])
            return
        store = ["--chunk-tokens", str(cfg.chunk_tokens)]
        for i in range(cfg.num_prefill):
            self._spawn(f"prefill-{i}", "prefill.main", [
                *common, *store, "--worker-id", f"prefill-{i}", "--store-node", self._store_node(f"store-{i}"),
            ])  # fmt: skip
        for i in range(cfg.num_decode):
            self._spawn(f"decode-{i}", "decode.main", [
                *common, *store, "--worker-id", f"decode-{i}", "--store-node", self._store_node(f"store-decode-{i}"),
            ])  # fmt: skip

    @functools.cached_property
    def _model(self):
        """The served model's config (``engine.config.ModelConfig``), read once."""
        from engine.config import ModelConfig

        return ModelConfig.from_dir(self.config.model_dir)

    @functools.cached_property
    def _kv_bytes_per_token(self) -> int:
        """KV bytes of one token of this model as the workers hold it (float32, their default)."""
        import torch

        from engine.runner import kv_bytes_per_page

        return kv_bytes_per_page(self._model, 1, torch.float32)

    @property
    def _chunk_bytes(self) -> int:
        """The one size of a store chunk: ``chunk_tokens`` of KV as the workers send it."""
        import torch

        from engine.kv_codec import bytes_per_token

        return bytes_per_token(self._model, torch.float32, self.config.kv_dtype) * self.config.chunk_tokens

    def _store_node(self, node_id: str) -> str:
        self._spawn(node_id, "kvstore.node_main", [
            "--redis-url", self.redis_url, "--listen", "tcp://127.0.0.1:0", "--node-id", node_id,
            "--capacity-bytes", str(self.config.store_capacity_bytes), "--chunk-bytes", str(self._chunk_bytes),
            *self._disk_args(node_id), "--replicate-after", str(self.config.store_replicate_after),
        ])  # fmt: skip
        return node_id

    def _disk_args(self, node_id: str) -> list[str]:
        path, capacity = self.config.store_disk_path, self.config.store_disk_capacity_bytes
        return ["--disk-path", str(path / node_id), "--disk-capacity", str(capacity)] if path else []

    def _spawn(self, name: str, module: str, args: list[str], env: dict[str, str] | None = None) -> Proc:
        """Start ``python -m module args`` with this process's environment, the cluster key, and ``env``."""
        argv = [sys.executable, "-m", module, *args]
        env = {**os.environ, auth.ENV: self.cluster_key, **(env or {})}
        proc = Proc(name, _popen(argv, env), argv, env, stage=STOP_STAGES.get(module, 1))
        self.procs.append(proc)
        log.info("started %s (pid %d)", name, proc.pid)
        return proc

    def supervise(self) -> None:
        """Restart what died (call it every fraction of a second while serving): the embedded
        Redis at once, on its port (the workers and store nodes re-register by themselves), and
        every child that exited after a backoff of 1, 2, 4 ... 30 s over consecutive quick deaths.
        A restarted worker registers under its old name and serves; a restarted store node comes
        back empty under its old name (a cache: requests recompute what it held)."""
        if self.redis is not None and self.redis.exit_code() is not None:
            log.error("redis (pid %s) exited with code %s; restarting it on port %d",
                      self.redis.pid, self.redis.exit_code(), self.redis.port)  # fmt: skip
            self.redis.stop()
            self.redis.start()
        now = time.monotonic()
        for p in self.procs:
            code = p.popen.poll()
            if code is None:
                continue
            if p.restart_at is None:
                p.quick_deaths = p.quick_deaths + 1 if now - p.started_at < STABLE_AFTER_S else 1
                backoff = RESTART_BACKOFF_S[min(p.quick_deaths, len(RESTART_BACKOFF_S)) - 1]
                p.restart_at = now + backoff
                level = logging.WARNING if code == 0 else logging.ERROR  # 0: it was stopped (drained)
                log.log(level, "%s (pid %d) exited with code %s; restarting it in %g s",
                        p.name, p.pid, code, backoff)  # fmt: skip
            elif now >= p.restart_at:
                p.respawn()
                log.info("restarted %s (pid %d)", p.name, p.pid)

    def proc(self, name: str) -> Proc:
        return next(p for p in self.procs if p.name == name)

    def _check_alive(self) -> None:
        for p in self.procs:
            if p.popen.poll() is not None:
                raise RuntimeError(f"{p.name} exited with code {p.popen.returncode} during startup")

    def _wait_until(self, ready: Callable[[], bool], what: str, poll_s: float = 0.2) -> None:
        """Poll ``ready`` until it holds; raise if a child exits first or ``startup_timeout_s`` passes
        (the ``TimeoutError`` says ``what`` after how long)."""
        deadline = time.monotonic() + self.config.startup_timeout_s
        while not ready():
            if self.stopping:
                raise StopRequested(f"stopped while waiting: {what}")
            self._check_alive()
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what} after {self.config.startup_timeout_s}s")
            time.sleep(poll_s)

    def _wait_for_workers(self) -> None:
        registry = WorkerRegistry(self.redis_url)
        expected = self.config.num_engines if self.config.mode == "disaggregated" else self.config.num_prefill
        try:
            self._wait_until(lambda: len(registry.live()) >= expected, "workers not ready")
        finally:
            registry.close()

    def _wait_for_router(self) -> None:
        """Until ``/ready`` says a request could be served (with the API key: the path may be closed)."""
        key = self.config.api_key
        request = urllib.request.Request(
            f"{self.url}/ready", headers={"Authorization": f"Bearer {key}"} if key else {}
        )

        def ready() -> bool:
            try:
                with urllib.request.urlopen(request, timeout=1) as r:
                    return r.status == 200
            except OSError:
                return False

        self._wait_until(ready, "router not ready")

    def request_stop(self) -> None:
        """Ask ``tandem up`` to stop (a signal handler may call it): the first call drains
        (``stop()`` follows), a second stops what is draining at once. A start still waiting for
        its children gives up (``StopRequested``)."""
        if self.stopping:
            self.hurry = True
        self.stopping = True

    def stop(self, timeout_s: float | None = None) -> None:
        """Stop every child by PID, in stages (the router, the workers, the store nodes), then
        Redis. Each stage is sent SIGTERM and gets ``timeout_s`` (default: the drain timeout and a
        margin) to exit; what outlives it is killed."""
        grace_s = self.config.drain_timeout_s + STOP_MARGIN_S if timeout_s is None else timeout_s
        for stage in sorted({p.stage for p in self.procs}):
            self._stop_stage([p for p in reversed(self.procs) if p.stage == stage], grace_s)
        self.procs.clear()
        if self.redis is not None:
            self.redis.stop()
            self.redis = None

    def _stop_stage(self, procs: list[Proc], grace_s: float) -> None:
        """SIGTERM ``procs`` and wait up to ``grace_s`` for them to exit; kill the ones still
        running. While ``hurry`` holds, SIGTERM is repeated (a second signal stops them at once;
        repeated because signals sent close together may arrive as one)."""
        running = [p for p in procs if p.popen.poll() is None]
        deadline, signalled_at = time.monotonic() + grace_s, float("-inf")
        for p in running:
            p.popen.send_signal(signal.SIGTERM)
        while any(p.popen.poll() is None for p in running) and time.monotonic() < deadline:
            if self.hurry and time.monotonic() - signalled_at > HURRY_RESIGNAL_S:
                signalled_at = time.monotonic()
                for p in running:
                    if p.popen.poll() is None:
                        p.popen.send_signal(signal.SIGTERM)
            time.sleep(0.05)
        for p in running:
            if p.popen.poll() is None:
                log.warning(
                    "%s (pid %d) did not exit within %g s of SIGTERM; killing it", p.name, p.pid, grace_s
                )
                p.popen.kill()
                p.popen.wait()

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
