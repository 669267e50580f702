"""``tandem serve store``: run one store node until SIGTERM / SIGINT.

    python -m kvstore.node_main --redis-url redis://127.0.0.1:6379 \\
        --listen tcp://127.0.0.1:5600 --capacity-bytes 4GiB [--node-id store-0]
"""

from __future__ import annotations

import argparse
import ctypes
import logging
import signal
import sys
import threading

from kvstore.config import StoreNodeConfig
from kvstore.node import StoreNode
from kvstore.sizes import parse_bytes


def _add_geometry_args(parser: argparse.ArgumentParser) -> None:
    """How the arena is cut into slots, and which chunks it takes."""
    parser.add_argument(
        "--slot-bytes",
        type=parse_bytes,
        default=0,
        help="slot size; 0 (default) sizes slots to the first chunk",
    )
    parser.add_argument(
        "--chunk-bytes", type=parse_bytes, default=0,
        help="accept chunks of exactly this size only, one a slot (0, the default: any size that fits); "
        "set it from the model's KV layout so that no client can store a chunk of another shape",
    )  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tandem serve store",
        description="Run a KV store node: a host-memory arena of chunk slots, served over ZeroMQ "
        "and published in the Redis index.",
    )
    parser.add_argument("--redis-url", required=True, help="the index, e.g. redis://127.0.0.1:6379")
    parser.add_argument(
        "--listen", required=True, help="address to bind, e.g. tcp://127.0.0.1:5600 (port 0: any)"
    )
    parser.add_argument("--capacity-bytes", required=True, type=parse_bytes, help="arena size, e.g. 4GiB")
    parser.add_argument(
        "--node-id", help="unique, stable name (default: store@HOST:PORT of the advertised address)"
    )
    parser.add_argument(
        "--advertise", help="address clients use to reach this node (default: the bound address)"
    )
    _add_geometry_args(parser)
    parser.add_argument("--heartbeat-ttl-s", type=float, default=5.0, help="lease TTL in seconds (default 5)")
    parser.add_argument(
        "--evict-watermark", type=float, default=0.9, help="evict LRU chunks above this use fraction (0.9)"
    )
    parser.add_argument(
        "--read-lease-s", type=float, default=30.0, help="drop a reader that accepts no bytes this long (30)"
    )
    parser.add_argument(
        "--in-place-lease-s", type=float, default=5.0,
        help="how long the chunks of an in-place transfer (a client on this host copying them itself) "
        "stay pinned after the reply, unless released or committed sooner (5)",
    )  # fmt: skip
    parser.add_argument(
        "--max-frame-bytes", type=parse_bytes, default="256MiB", help="largest frame accepted (256MiB)"
    )
    parser.add_argument(
        "--disk-path",
        help="directory of a disk tier: chunks evicted from memory are kept there and read back on a "
        "hit; a node restarted on the same directory comes back with its chunks (default: no disk tier)",
    )
    parser.add_argument(
        "--disk-capacity", type=parse_bytes, default=0,
        help="bytes the disk tier may hold, e.g. 20GiB (required with --disk-path); least recently used "
        "chunk files are deleted beyond it",
    )  # fmt: skip
    parser.add_argument(
        "--replicate-after", type=int, default=0,
        help="copy a chunk fetched more than this many times within --replicate-window-s to another live "
        "node, so a hot prefix is served by two (default 0: never)",
    )  # fmt: skip
    parser.add_argument(
        "--replicate-window-s", type=float, default=10.0, help="the window of --replicate-after (default 10)"
    )
    parser.add_argument(
        "--no-shared-memory", dest="shared_memory", action="store_false",
        help="keep the arena private: clients on this host then send and receive chunks over the socket "
        "too, instead of copying them in and out of the mapped arena themselves (default: shared)",
    )  # fmt: skip
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING or ERROR")
    return parser


def keep_received_frames_warm() -> bool:
    """Let libzmq's buffers for large received frames be reused rather than mapped afresh.

    glibc serves every allocation over its mmap threshold (128 KiB, adapting up to 32 MiB) with a
    new mapping, and trims freed heap back to the kernel: each chunk a node receives then lands in
    pages the kernel must fault in and zero first. Measured here (1 MiB chunks, 16 a request, put
    + get): the node spent as much CPU on those faults as on the copy itself, and store throughput
    rose 1.4 -> 2.1 GiB/s with the thresholds raised (the engine's processes do the same, see
    ``engine.memory.tune_host_allocator``). Returns whether glibc took the settings (False off glibc).
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    # the same values as engine.memory.tune_host_allocator (kvstore may not import engine);
    # tests/kvstore/test_allocator.py checks both
    m_trim_threshold, m_mmap_threshold = -1, -3
    return bool(libc.mallopt(m_mmap_threshold, 32 << 20) and libc.mallopt(m_trim_threshold, 1 << 30))


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if not keep_received_frames_warm():
        logging.getLogger(__name__).info("glibc allocator thresholds not set: received frames map afresh")
    reach = args.advertise or args.listen
    if args.node_id is None and reach.endswith((":0", ":*")):
        parser.error("--node-id is required when the port is chosen at bind time (port 0)")
    node_id = args.node_id or "store@" + reach.split("://", 1)[-1]
    try:
        config = StoreNodeConfig(
            node_id=node_id,
            listen=args.listen,
            redis_url=args.redis_url,
            capacity_bytes=args.capacity_bytes,
            slot_bytes=args.slot_bytes,
            chunk_bytes=args.chunk_bytes,
            advertise=args.advertise,
            heartbeat_ttl_s=args.heartbeat_ttl_s,
            evict_watermark=args.evict_watermark,
            shared_memory=args.shared_memory,
            read_lease_s=args.read_lease_s,
            in_place_lease_s=args.in_place_lease_s,
            max_frame_bytes=args.max_frame_bytes,
            disk_path=args.disk_path,
            disk_capacity_bytes=args.disk_capacity,
            replicate_after=args.replicate_after,
            replicate_window_s=args.replicate_window_s,
        )
        node = StoreNode(config)
    except ValueError as e:
        parser.error(str(e))
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    logging.getLogger(__name__).info("store node %s serving at %s", config.node_id, node.address)
    node.serve(stop)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
