"""Process plumbing shared by the worker entry points: logging, signals, the loop's lifetime."""

from __future__ import annotations

import argparse
import logging
import signal
import threading


def setup_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def stop_on_signals() -> threading.Event:
    """An event set by SIGTERM or SIGINT, so the serve loop can deregister and exit cleanly."""
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    return stop


def add_worker_args(parser: argparse.ArgumentParser, role: str) -> None:
    """The flags every worker role takes (the engine's own come from ``engine.args``)."""
    parser.add_argument("--model", required=True, help="HF model directory")
    parser.add_argument("--redis-url", required=True, help="the cluster's Redis (membership, store index)")
    parser.add_argument(
        "--listen", default="tcp://127.0.0.1:0", help="inbox address (port 0: pick a free one)"
    )
    parser.add_argument(
        "--advertise",
        default=None,
        help="inbox address published for others to reach this worker, e.g. tcp://prefill:7001 when "
        "binding tcp://0.0.0.0:7001 in a container (default: the bound address)",
    )
    parser.add_argument("--worker-id", default=None, help=f"unique id (default {role}@<inbox address>)")
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING or ERROR (default INFO)")


def add_store_args(parser: argparse.ArgumentParser, writes: str) -> None:
    """The flags of a worker that writes KV chunks to a store node of its own (``writes``: what)."""
    parser.add_argument(
        "--store-node",
        default="",
        help=f"id of this worker's store node, where it writes {writes} ('' = none)",
    )
    parser.add_argument(
        "--chunk-tokens", type=int, default=64,
        help="tokens per store chunk (a multiple of the page size; equal on every worker, or keys differ)",
    )  # fmt: skip


def store_client(args: argparse.Namespace):
    """A ``StoreClient`` bound to ``--store-node``, or None without one (imported only then: it needs torch)."""
    if not args.store_node:
        return None
    from kvstore.client import StoreClient

    return StoreClient(args.redis_url, node_id=args.store_node)


def default_worker_id(role: str, inbox_address: str) -> str:
    return f"{role}@{inbox_address.removeprefix('tcp://')}"
