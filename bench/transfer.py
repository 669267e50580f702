"""Transfer benchmark: the KV store between processes against bare ZeroMQ, same sockets, same run.

Starts an embedded Redis, one store node and one bare ZeroMQ server, each in its own process,
then measures from this process:

- put + get throughput of ``--chunk-bytes`` chunks (1 MiB) in batches of ``--batch`` (16), through
  ``StoreClient`` in place (this host's client maps the node's arena: reserve, copy in, commit;
  pin, copy out and check, release; the index updated as always), through ``StoreClient`` over
  the socket (as a client on another host: index update, copy into the arena, zero-copy reply,
  tensors built on arrival) and through bare multipart messages on identically configured sockets
  (the baseline: one request carrying the batch, one reply; the server keeps the frames it got and
  sends them back). Rounds alternate between the three so that load from other processes hits
  all alike; every round puts fresh keys, so the store evicts as it would in service. Target:
  ratio >= 0.8.
- latency to fetch a 16-chunk prefix (``get``: index lookup plus transfer), p50 / p99, and the
  fitted cost model ``fetch_s = fixed_s + per_byte_s * bytes`` the conductor uses;
- ``match_prefix`` latency for a 64-key chain (half of it cached), p50 / p99;
- the disk tier (``bench/transfer_disk.py``): write and cold / warm read GiB/s, the latency of a
  one-chunk fetch that a second node (two memory slots, a disk tier) serves from disk against one
  served from memory, and the disk cost line the conductor prices a disk hit with.

Results go to ``bench/results/transfer.json``.

    python -m bench.transfer            # about 15 seconds
    python -m bench.transfer --quick    # a few seconds
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

if not __package__:  # run as `python bench/transfer.py`: bench/ is sys.path[0] and shadows transfer/
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import redis  # noqa: E402
import torch  # noqa: E402
from tqdm import tqdm  # noqa: E402

from bench import transfer_disk  # noqa: E402
from kvstore import StoreClient  # noqa: E402
from kvstore.embedded_redis import EmbeddedRedis  # noqa: E402
from kvstore.index import StoreIndex  # noqa: E402
from kvstore.keys import chain_keys  # noqa: E402
from kvstore.node_main import keep_received_frames_warm  # noqa: E402
from transfer import SocketOptions, sockets  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "transfer.json"
REPO = Path(__file__).resolve().parents[1]
MiB = 1 << 20


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.transfer", description=__doc__.split("\n\n")[0])
    parser.add_argument("--chunk-bytes", type=int, default=MiB, help="bytes per chunk (1 MiB)")
    parser.add_argument("--batch", type=int, default=16, help="chunks per put / get request (16)")
    parser.add_argument("--rounds", type=int, default=20, help="throughput rounds per system (20)")
    parser.add_argument("--batches-per-round", type=int, default=8, help="put+get batches per round (8)")
    parser.add_argument("--latency-samples", type=int, default=200, help="samples per latency figure (200)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 2 rounds, 40 samples")
    parser.add_argument(
        "--out", type=Path, default=RESULTS, help=f"JSON output ({RESULTS.relative_to(REPO)})"
    )
    parser.add_argument("--raw-server", metavar="ADDRESS", help=argparse.SUPPRESS)  # internal: the baseline
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.latency_samples = 2, 40
    return args


# ---- the baseline: bare multipart messages -----------------------------------------------------


def serve_raw(listen: str) -> None:
    """Bare ROUTER: b"put" + frames → keeps the frames, replies b"ok"; b"get" → sends them back.
    Its allocator is tuned as a store node's is (``keep_received_frames_warm``)."""
    keep_received_frames_warm()
    sock = sockets.bind_router(listen, SocketOptions())
    print(sockets.bound_address(sock), flush=True)
    kept: list = []
    while True:
        frames = sock.recv_multipart(copy=False)
        peer, op = frames[0], frames[1].bytes
        if op == b"put":
            kept = frames[2:]
            sock.send_multipart([peer, b"ok"])
        elif op == b"get":
            sock.send_multipart([peer, b"data", *kept], copy=False)
        else:
            return


def raw_round(dealer, batches: list[list[torch.Tensor]]) -> float:
    start = time.perf_counter()
    for chunks in batches:
        dealer.send_multipart([b"put", *(c.numpy() for c in chunks)], copy=False)
        dealer.recv_multipart()
        dealer.send_multipart([b"get"])
        frames = dealer.recv_multipart(copy=False)
        assert len(frames) == 1 + len(chunks)
    return time.perf_counter() - start


# ---- the store ------------------------------------------------------------------------------------


def store_round(client: StoreClient, batches: list[list[torch.Tensor]], round_name: str) -> float:
    start = time.perf_counter()
    for b, chunks in enumerate(batches):
        keys = [f"{round_name}b{b}c{i}".encode().ljust(16, b".") for i in range(len(chunks))]
        assert all(client.put(keys, chunks))
        got = client.get(keys)
        assert len(got) == len(chunks)
    return time.perf_counter() - start


def percentiles_ms(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)

    def at(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 3)

    return {"p50": at(0.50), "p99": at(0.99), "mean": round(statistics.mean(ordered) * 1000, 3)}


def timed(fn, n: int, bar: tqdm) -> list[float]:
    samples = []
    for _ in range(n):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
        bar.update()
    return samples


def throughput_rounds(
    in_place: StoreClient,
    socket: StoreClient,
    dealer,
    batches: list[list[torch.Tensor]],
    rounds: int,
    bar: tqdm,
) -> tuple[list[float], list[float], list[float]]:
    """Seconds per round of bare ZeroMQ, of the store in place and of the store over the socket,
    alternating, after one warm-up round each."""
    raw_round(dealer, batches)  # warm-up: connections, first touch of the arena
    store_round(in_place, batches, "w")
    store_round(socket, batches, "ws")
    bar.update(3)
    raw_s, in_place_s, socket_s = [], [], []
    for r in range(rounds):
        raw_s.append(raw_round(dealer, batches))
        in_place_s.append(store_round(in_place, batches, f"r{r}"))
        socket_s.append(store_round(socket, batches, f"s{r}"))
        bar.update(3)
    assert in_place.num_in_place and not socket.num_in_place, "each client took its own path"
    return raw_s, in_place_s, socket_s


def latency_samples(
    client: StoreClient, in_place: StoreClient, redis_url: str, chunks: list[torch.Tensor], n: int, bar: tqdm
) -> tuple[dict[int | str, list[float]], list[float], list[float]]:
    """``n`` samples each of: fetching 1, 4 and 16 chunks of a 16-key prefix over the socket
    (``chunks`` is put under it) and 16 in place, ``match_prefix`` over a 64-key chain (32 cached)
    and a Redis ping."""
    chain = chain_keys(list(range(64 * 16)), 16, b"bench-fingerprint")
    prefix = chain[:16]
    client.put(prefix, chunks)
    fetch: dict[int | str, list[float]] = {
        k: timed(lambda k=k: client.get(prefix[:k]), n, bar) for k in (1, 4, 16)
    }
    fetch["16 in place"] = timed(lambda: in_place.get(prefix), n, bar)
    client.put(chain[16:32], chunks)  # 32 of the 64 keys cached
    assert client.match_prefix(chain) == {"bench": 32}
    match = timed(lambda: client.match_prefix(chain), n, bar)
    pinger = redis.Redis.from_url(redis_url)
    ping = timed(pinger.ping, n, bar)  # the floor: one Redis round trip
    pinger.close()
    return fetch, match, ping


def run(args: argparse.Namespace, redis_url: str, raw_address: str, scratch: Path) -> dict:
    chunk_elems, batch = args.chunk_bytes, args.batch
    batches = [[torch.randint(0, 255, (chunk_elems,), dtype=torch.uint8) for _ in range(batch)]
               for _ in range(args.batches_per_round)]  # fmt: skip
    in_place = StoreClient(redis_url=redis_url, node_id="bench")
    # the socket path: the latencies, the fitted fetch cost (what a reader on another host pays)
    client = StoreClient(redis_url=redis_url, node_id="bench", shared_memory=False)
    disk_client = StoreClient(redis_url=redis_url, node_id="bench-disk", shared_memory=False)
    dealer = sockets.connect_dealer(raw_address, SocketOptions())
    total = 3 * (args.rounds + 1) + 7 * args.latency_samples
    with tqdm(total=total, desc="transfer", unit="step") as bar:
        raw_s, in_place_s, socket_s = throughput_rounds(in_place, client, dealer, batches, args.rounds, bar)
        fetch, match, ping = latency_samples(
            client, in_place, redis_url, batches[0], args.latency_samples, bar
        )
        disk_hit = transfer_disk.disk_hit_latency(disk_client, batches[0], args.latency_samples, bar)
    tier = transfer_disk.tier_throughput(args.chunk_bytes, 64, scratch / "tier")
    dealer.send_multipart([b"stop"])
    dealer.close()
    client.close()
    in_place.close()
    disk_client.close()
    result = build_result(args, raw_s, in_place_s, socket_s, fetch, match, ping)
    cold = tier.pop("cold_read_s_per_chunk")
    result["disk"] = {
        **tier,
        "fetch_1_chunk_from_disk_ms": percentiles_ms(disk_hit),
        "fetch_1_chunk_from_memory_ms": percentiles_ms(fetch[1]),
        "disk_cost_model": transfer_disk.disk_cost_model(args.chunk_bytes, cold, disk_hit, fetch[1]),
        "directory": str(scratch.parent),
    }
    return result


def build_result(
    args: argparse.Namespace,
    raw_s: list[float],
    store_s: list[float],
    socket_s: list[float],
    fetch: dict[int | str, list[float]],
    match: list[float],
    ping: list[float],
) -> dict:
    """The JSON result: throughputs and their ratio, latency percentiles, the fitted fetch cost."""
    round_bytes = 2 * args.batches_per_round * args.batch * args.chunk_bytes  # put + get
    raw_gib_s = round_bytes * len(raw_s) / sum(raw_s) / (1 << 30)
    store_gib_s = round_bytes * len(store_s) / sum(store_s) / (1 << 30)
    socket_gib_s = round_bytes * len(socket_s) / sum(socket_s) / (1 << 30)
    fixed_s, per_byte_s = fit_cost([n * args.chunk_bytes for n in (1, 4, 16)],
                                   [statistics.median(fetch[n]) for n in (1, 4, 16)])  # fmt: skip
    return {
        "config": {k: v for k, v in vars(args).items() if k not in ("out", "raw_server", "quick")},
        "machine": {
            "platform": platform.platform(),
            "cpus": _cpu_count(),
            "python": platform.python_version(),
        },
        "throughput": {
            "store_put_get_gib_s": round(store_gib_s, 3),
            "raw_zmq_multipart_gib_s": round(raw_gib_s, 3),
            "ratio": round(store_gib_s / raw_gib_s, 3),
            "ratio_median_of_rounds": round(statistics.median(r / s for r, s in zip(raw_s, store_s)), 3),
            "target_ratio": 0.8,
            "store_over_socket_gib_s": round(socket_gib_s, 3),
            "ratio_over_socket": round(socket_gib_s / raw_gib_s, 3),
            "store_round_s": [round(s, 4) for s in store_s],
            "store_over_socket_round_s": [round(s, 4) for s in socket_s],
            "raw_round_s": [round(s, 4) for s in raw_s],
        },
        "fetch_prefix_16_chunks_ms": percentiles_ms(fetch[16]),
        "fetch_prefix_16_chunks_in_place_ms": percentiles_ms(fetch["16 in place"]),
        "fetch_ms_by_chunks": {str(n): percentiles_ms(fetch[n]) for n in (1, 4)},
        "fetch_cost_model": {"fixed_s": fixed_s, "per_byte_s": per_byte_s},
        "match_prefix_64_keys_ms": percentiles_ms(match),
        "redis_ping_ms": percentiles_ms(ping),
    }


def fit_cost(sizes: list[int], seconds: list[float]) -> tuple[float, float]:
    """``seconds ~ fixed + per_byte * size`` by least squares, with neither term negative: a fetch
    split into requests in flight can take less than proportionally longer with size, and a
    negative fixed cost would tell the conductor that a small fetch is free."""
    fit = statistics.linear_regression(sizes, seconds)
    if fit.intercept >= 0 and fit.slope >= 0:
        return fit.intercept, fit.slope
    if fit.intercept < 0:  # the best line through the origin
        return 0.0, max(0.0, sum(x * y for x, y in zip(sizes, seconds)) / sum(x * x for x in sizes))
    return statistics.fmean(seconds), 0.0


def _cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.raw_server:
        serve_raw(args.raw_server)
        return 0
    keep_received_frames_warm()  # as a worker's process (and both servers) have it
    capacity = 2 * args.batches_per_round * args.batch * args.chunk_bytes + 64 * args.chunk_bytes
    procs: list[subprocess.Popen] = []
    with EmbeddedRedis() as redis_server, transfer_disk.scratch_dir() as scratch:
        try:
            node = _start_node(redis_server.url, "bench", capacity, args.chunk_bytes)
            procs.append(node)
            disk_node = _start_node(
                redis_server.url, "bench-disk", 2 * args.chunk_bytes, args.chunk_bytes,
                "--disk-path", f"{scratch}/node", "--disk-capacity", str(64 * args.chunk_bytes),
            )  # fmt: skip
            procs.append(disk_node)
            raw = subprocess.Popen(
                [sys.executable, "-m", "bench.transfer", "--raw-server", "tcp://127.0.0.1:0"],
                cwd=REPO,
                stdout=subprocess.PIPE,
                text=True,
            )
            procs.append(raw)
            raw_address = raw.stdout.readline().strip()
            _wait_for_node(redis_server.url, "bench", node)
            _wait_for_node(redis_server.url, "bench-disk", disk_node)
            results = run(args, redis_server.url, raw_address, Path(scratch))
        finally:
            for proc in procs:
                proc.terminate()
                proc.wait(10)
    _write(args.out, results)
    return 0


def _write(out: Path, results: dict) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    t = results["throughput"]
    print(f"put+get: store in place {t['store_put_get_gib_s']} GiB/s, over the socket "
          f"{t['store_over_socket_gib_s']} GiB/s, bare ZeroMQ {t['raw_zmq_multipart_gib_s']} GiB/s: ratio "
          f"{t['ratio']} in place (median of rounds {t['ratio_median_of_rounds']}; target >= 0.8), "
          f"{t['ratio_over_socket']} over the socket")  # fmt: skip
    print(f"fetch 16-chunk prefix: {results['fetch_prefix_16_chunks_ms']} ms over the socket, "
          f"{results['fetch_prefix_16_chunks_in_place_ms']} ms in place")  # fmt: skip
    print(f"match_prefix, 64 keys: {results['match_prefix_64_keys_ms']} ms")
    d = results["disk"]
    print(f"disk tier: write {d['write_gib_s']} GiB/s, read cold {d['read_cold_gib_s']} / warm "
          f"{d['read_warm_gib_s']} GiB/s; 1-chunk fetch from disk {d['fetch_1_chunk_from_disk_ms']} ms, "
          f"from memory {d['fetch_1_chunk_from_memory_ms']} ms")  # fmt: skip
    print(f"wrote {out}")
    if out.resolve() == RESULTS.resolve():  # the cost profile follows the default results
        from bench.profile_fit import write_profile

        print(f"refitted {write_profile()}")


def _start_node(
    redis_url: str, node_id: str, capacity: int, slot_bytes: int, *extra: str
) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "kvstore.node_main", "--redis-url", redis_url, "--node-id", node_id,
         "--listen", "tcp://127.0.0.1:0", "--capacity-bytes", str(capacity),
         "--slot-bytes", str(slot_bytes), "--log-level", "WARNING", *extra],
        cwd=REPO,
    )  # fmt: skip


def _wait_for_node(redis_url: str, node_id: str, proc: subprocess.Popen, timeout_s: float = 30.0) -> str:
    index = StoreIndex(redis_url)
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            live = {n.node_id: n.address for n in index.nodes()}
            if node_id in live:
                return live[node_id]
            time.sleep(0.05)
    finally:
        index.close()
    raise RuntimeError(
        f"store node {node_id} did not register within {timeout_s} s (exit code {proc.poll()})"
    )


if __name__ == "__main__":
    raise SystemExit(main())
