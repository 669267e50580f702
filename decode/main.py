"""``tandem serve decode``: one decode worker, or with ``--mode colocated`` a worker that does both."""

from __future__ import annotations

import argparse
import logging
import sys

from decode.worker import DecodeWorker
from engine.args import add_engine_args, build_engine
from kvstore.serve import add_store_args, add_worker_args, default_worker_id, setup_logging, store_client
from kvstore.workers import WorkerInfo
from kvstore.workers_loop import serve_worker
from transfer.channel import Inbox

log = logging.getLogger("tandem.decode")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tandem serve decode",
        description="Run a decode worker: prefilled requests (with their KV) in, tokens streamed to the "
        "router. With --mode colocated it also prefills prompts itself (the non-disaggregated baseline).",
    )
    add_worker_args(p, "decode")
    p.add_argument("--mode", choices=["disaggregated", "colocated"], default="disaggregated")
    add_store_args(p, "the chunks its requests generate (not with --mode colocated)")
    add_engine_args(p)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.mode == "colocated" and args.store_node:
        parser.error("--store-node: a colocated worker uses no KV store (its prefix cache is local)")
    setup_logging(args.log_level)
    engine = build_engine(args, args.model)
    inbox = Inbox(args.listen)
    address = args.advertise or inbox.address  # what the router and peers connect to
    role = "colocated" if args.mode == "colocated" else "decode"
    info = WorkerInfo(
        worker_id=args.worker_id or default_worker_id(role, address),
        role=role, address=address, model=engine.model_name, fingerprint=engine.fingerprint.hex(),
        page_size=engine.pool.page_size, chunk_tokens=args.chunk_tokens, max_model_len=engine.max_model_len,
        store_node_id=args.store_node,
    )  # fmt: skip
    worker = DecodeWorker(engine, info, store_client(args))
    if args.store_node:
        log.info("%s writes generated chunks to store node %s", info.worker_id, args.store_node)
    serve_worker(info, inbox, args.redis_url, worker)
    return 0


if __name__ == "__main__":
    sys.exit(main())
