"""Soak under faults: steady streaming load on ``tandem up`` while each role is killed in turn.

A real cluster (``tandem up --prefill 2 --decode 1``, its supervisor on) serves ``--streams``
clients, each sending streamed chat requests back to back. After a warm-up, every fault in turn:
``kill -9`` of one process (a prefill worker, the decode worker, a store node, Redis), then the
load goes on until the cluster has healed (the process restarted and registered, ``/health`` ok)
and for ``--settle-s`` more. Each request ends one of three ways:

- ok: the stream finished;
- hung up: the client closed the stream after three chunks (``--hang-up`` of them do): the workers
  must free what it held;
- failed: an OpenAI-style error (an HTTP error with a body, or an error event in the stream);
- lost: anything else (a reset connection, a timeout, a stream that ended without a finish reason).
  Must be 0.

Per fault: requests ok / failed / lost that ended while it lasted, the recovery time (kill → its successor
registered under the old name, or for Redis every process registered again, and ``/health`` ok), and
after the whole run, once idle: KV pages not free on any worker (must be 0) and every process's
RSS at the start and the end (a restarted process is a new one: its RSS is its own).

    python -m bench.soak --help
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import sys
import tempfile
import time
import urllib.error
from collections import Counter
from pathlib import Path

import openai

from bench.cluster_proc import Cluster, ClusterSpec, children, default_model_dir, http_get, rss_bytes, scrape
from kvstore.client import StoreClient
from kvstore.types import IndexUnavailable
from worker.registry import WorkerRegistry

RESULTS = Path(__file__).resolve().parent / "results" / "soak.json"
FAULTS = ("prefill-1", "decode-0", "store-0", "redis")
WORDS = ("the", "quick", "brown", "fox", "jumps", "over", "lazy", "dogs", "while", "seven", "tired", "owls")


class Load:
    """``streams`` clients sending streamed chat completions back to back; outcomes by phase."""

    def __init__(self, url: str, model: str, streams: int, max_tokens: int, hang_up_fraction: float) -> None:
        self.url, self.model, self.streams, self.max_tokens = url, model, streams, max_tokens
        self.hang_up_fraction = hang_up_fraction
        self.phase = "warm-up"
        self.outcomes: dict[str, Counter] = {}
        self.examples: dict[str, list[str]] = {}
        self._stop = asyncio.Event()

    async def run(self) -> None:
        client = openai.AsyncOpenAI(base_url=f"{self.url}/v1", api_key="unused", max_retries=0, timeout=120.0)
        try:
            await asyncio.gather(*(self._client(client, i) for i in range(self.streams)))
        finally:
            await client.close()

    def stop(self) -> None:
        self._stop.set()

    async def _client(self, client: openai.AsyncOpenAI, seed: int) -> None:
        rng = random.Random(seed)
        while not self._stop.is_set():
            outcome, detail = await self._one(client, rng)
            phase = self.phase  # counted where it ended: a stream cut by a fault counts for that fault
            self.outcomes.setdefault(phase, Counter())[outcome] += 1
            if (
                outcome not in ("ok", "hung up")
                and len(self.examples.setdefault(f"{phase} {outcome}", [])) < 3
            ):
                self.examples[f"{phase} {outcome}"].append(detail)
            if outcome not in ("ok", "hung up"):
                await asyncio.sleep(0.2)  # a client backs off after an error (429/503 say so)

    async def _one(self, client: openai.AsyncOpenAI, rng: random.Random) -> tuple[str, str]:
        words = " ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 40)))
        messages = [{"role": "user", "content": f"Continue: {words}"}]
        hang_up = rng.random() < self.hang_up_fraction  # this client leaves mid-answer
        try:
            stream = await client.chat.completions.create(
                model=self.model, messages=messages, max_tokens=self.max_tokens, temperature=0.7, stream=True
            )
            finish, received = None, 0
            async for chunk in stream:
                received += 1
                if hang_up and received == 3:
                    await stream.close()
                    return "hung up", ""
                if chunk.choices and chunk.choices[0].finish_reason:
                    finish = chunk.choices[0].finish_reason
            return ("ok", "") if finish else ("lost", "the stream ended without a finish reason")
        except openai.APIStatusError as e:  # an HTTP error with an OpenAI body
            return "failed", f"{e.status_code} {e.code}"
        except (openai.APIConnectionError, openai.APITimeoutError) as e:
            return "lost", f"{type(e).__name__}: {e}"
        except openai.APIError as e:  # an error event in the stream: a clear failure
            return ("failed", f"error event: {e.code}") if e.body else ("lost", f"{type(e).__name__}: {e}")


def redis_url_of(cluster: Cluster) -> str:
    """The cluster's Redis URL (with its password), as ``tandem up`` handed it to the router."""
    router = children(cluster.popen.pid)["router"]
    argv = Path(f"/proc/{router}/cmdline").read_bytes().decode().split("\0")
    return argv[argv.index("--redis-url") + 1]


def registered(redis_url: str) -> dict[str, str]:
    """Every registered worker's incarnation and store node's address, by name ({} if Redis is down)."""
    registry, store = WorkerRegistry(redis_url), StoreClient(redis_url)
    try:
        workers = {w.info.worker_id: w.info.incarnation for w in registry.live()}
        return {**workers, **{n.node_id: n.address for n in store.nodes()}}
    except IndexUnavailable:
        return {}
    finally:
        registry.close()
        store.close()


async def healed(
    cluster: Cluster, redis_url: str, fault: str, before: dict[str, str], timeout_s: float
) -> float | None:
    """Seconds until the killed process's successor has registered (a new incarnation or address;
    for Redis: everything registered again) and ``/health`` is ok on a reachable registry."""
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        now = await asyncio.to_thread(registered, redis_url)
        replaced = fault == "redis" or now.get(fault, before[fault]) != before[fault]
        if replaced and set(now) == set(before):
            try:
                body = json.loads(await asyncio.to_thread(_health, cluster.url))
            except (OSError, ValueError):
                body = {}
            if body.get("status") == "ok" and body.get("registry_reachable"):
                return time.monotonic() - start
        await asyncio.sleep(0.25)
    return None


def _health(url: str) -> str:
    try:
        return http_get(f"{url}/health")
    except urllib.error.HTTPError as e:  # 503 while unhealthy: its body says why
        return e.read().decode()


async def soak(cluster: Cluster, args: argparse.Namespace) -> dict:
    model = json.loads(http_get(f"{cluster.url}/v1/models"))["data"][0]["id"]
    load = Load(cluster.url, model, args.streams, args.max_tokens, args.hang_up)
    runner = asyncio.create_task(load.run())
    redis_url = redis_url_of(cluster)
    rss_before = {name: rss_bytes(pid) for name, pid in children(cluster.popen.pid).items()}
    await asyncio.sleep(args.warm_s)
    faults = {}
    for fault in args.faults:
        load.phase = fault
        before = await asyncio.to_thread(registered, redis_url)
        pid = children(cluster.popen.pid)[fault]
        os.kill(pid, signal.SIGKILL)
        print(f"killed {fault} (pid {pid})", flush=True)
        recovery = await healed(cluster, redis_url, fault, before, args.recovery_timeout_s)
        faults[fault] = {"pid": pid, "recovery_s": recovery}
        print(f"  healed in {faults[fault]['recovery_s']} s", flush=True)
        await asyncio.sleep(args.settle_s)
    load.phase = "after"
    await asyncio.sleep(args.settle_s)
    load.stop()
    await runner
    return {"faults": faults, "load": load, "rss_before": rss_before}


def _by_label(metrics: dict[str, float], family: str) -> dict[str, float]:
    """``{label value: sample}`` of one scraped family with one label."""
    return {k.split('="')[1].split('"')[0]: v for k, v in metrics.items() if k.startswith(family + "{")}


async def held_once_idle(cluster: Cluster, timeout_s: float = 30.0) -> dict[str, float]:
    """KV pages not free per worker and chunks still pinned per store node, once every one of them
    reports none (or after ``timeout_s``): what a leak would leave behind."""
    deadline = time.monotonic() + timeout_s
    while True:
        metrics = scrape(cluster.url)
        free = _by_label(metrics, "tandem_worker_kv_pages_free")
        total = _by_label(metrics, "tandem_worker_kv_pages_total")
        held = {w: total[w] - free.get(w, 0) for w in total} | _by_label(
            metrics, "tandem_store_pinned_chunks"
        )
        if not any(held.values()) or time.monotonic() > deadline:
            return held
        await asyncio.sleep(1.0)  # loads come with heartbeats (0.5 s), store counters every 1.7 s


def report(result: dict, held: dict, rss_after: dict) -> dict:
    load: Load = result["load"]
    phases = {phase: dict(counts) for phase, counts in load.outcomes.items()}
    out = {
        "faults": {f: {**v, **phases.get(f, {})} for f, v in result["faults"].items()},
        "phases": phases,
        "lost": sum(c.get("lost", 0) for c in load.outcomes.values()),
        "held_once_idle": held,
        "rss_mb": {n: {"before": result["rss_before"].get(n, 0) / 2**20, "after": rss_after.get(n, 0) / 2**20}
                   for n in sorted(set(result["rss_before"]) | set(rss_after))},
        "examples": load.examples,
    }  # fmt: skip
    print(f"\n{'phase':<12} {'ok':>6} {'hung up':>8} {'failed':>7} {'lost':>5} {'recovery s':>11}")
    for phase, counts in phases.items():
        rec = result["faults"].get(phase, {}).get("recovery_s")
        rec_text = "-" if phase not in result["faults"] else "never" if rec is None else f"{rec:.1f}"
        print(f"{phase:<12} {counts.get('ok', 0):>6} {counts.get('hung up', 0):>8} {counts.get('failed', 0):>7} "
              f"{counts.get('lost', 0):>5} {rec_text:>11}")  # fmt: skip
    print(f"lost requests: {out['lost']}; KV pages and pinned store chunks held once idle: {held}")
    return out


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--streams", type=int, default=24, help="concurrent streaming clients (default 24)")
    ap.add_argument("--max-tokens", type=int, default=24, help="tokens per answer (default 24)")
    ap.add_argument(
        "--hang-up", type=float, default=0.1, help="fraction of clients that leave mid-answer (default 0.1)"
    )
    ap.add_argument("--faults", nargs="+", choices=FAULTS, default=list(FAULTS), help="killed in this order")
    ap.add_argument("--warm-s", type=float, default=20.0, help="load before the first fault (default 20)")
    ap.add_argument("--settle-s", type=float, default=15.0, help="load after each recovery (default 15)")
    ap.add_argument("--recovery-timeout-s", type=float, default=120.0)
    ap.add_argument("--num-pages", type=int, default=1024, help="KV pages per worker (default 1024)")
    ap.add_argument("--model", help="HF model directory (default: SmolLM2-135M-Instruct)")
    ap.add_argument("--out", default=str(RESULTS))
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _parse_args(argv)
    model = args.model or default_model_dir()
    log = Path(tempfile.mkdtemp(prefix="tandem-soak-")) / "cluster.log"
    print(f"cluster log: {log}")
    cluster = Cluster(ClusterSpec("soak", "disaggregated", "cache_aware", 2, 1), model, args.num_pages, log)
    try:
        cluster.wait_healthy(300.0)
        result = asyncio.run(soak(cluster, args))
        held = asyncio.run(held_once_idle(cluster))
        rss_after = {name: rss_bytes(pid) for name, pid in children(cluster.popen.pid).items()}
    finally:
        cluster.stop()
    out = {"streams": args.streams, "max_tokens": args.max_tokens, "cluster": "tandem up --prefill 2 --decode 1",
           **report(result, held, rss_after)}  # fmt: skip
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0 if out["lost"] == 0 and not any(held.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
