"""``tandem serve prefill``: one prefill worker (its store node runs as its own process)."""

from __future__ import annotations

import argparse
import logging
import sys

from engine.args import add_engine_args, build_engine
from kvstore.serve import add_store_args, add_worker_args, default_worker_id, setup_logging, store_client
from kvstore.workers import WorkerInfo
from kvstore.workers_loop import serve_worker
from prefill.worker import PrefillWorker
from transfer.channel import Inbox

log = logging.getLogger("tandem.prefill")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tandem serve prefill",
        description="Run a prefill worker: prompts in, first token out, KV handed to decode workers "
        "and written to the KV store.",
    )
    add_worker_args(p, "prefill")
    add_store_args(p, "its prompts' chunks")
    add_engine_args(p)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level)
    engine = build_engine(args, args.model)
    inbox = Inbox(args.listen)
    address = args.advertise or inbox.address  # what the router and peers connect to
    info = WorkerInfo(
        worker_id=args.worker_id or default_worker_id("prefill", address),
        role="prefill", address=address, model=engine.model_name, fingerprint=engine.fingerprint.hex(),
        page_size=engine.pool.page_size, chunk_tokens=args.chunk_tokens, max_model_len=engine.max_model_len,
        store_node_id=args.store_node,
    )  # fmt: skip
    worker = PrefillWorker(engine, info, store_client(args))
    log.info("%s writes chunks to store node %s", info.worker_id, args.store_node or "(none)")
    serve_worker(info, inbox, args.redis_url, worker)
    return 0


if __name__ == "__main__":
    sys.exit(main())
