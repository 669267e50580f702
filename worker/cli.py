"""Process plumbing shared by the worker entry points: flags, logging, signals, the process's life.

Each role's ``main`` is ``role_main(its worker class)``: it parses the flags below and runs the
process; everything about a worker process but the worker class happens here.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import uuid
from collections.abc import Callable

from engine.args import add_engine_args, build_engine
from engine.llm_engine import LLMEngine
from transfer.channel import Inbox
from worker.base import DEFAULT_HANDOFF_LAYERS, BaseWorker
from worker.drain import Drain
from worker.loop import run_worker_loop
from worker.registry import WorkerRegistry
from worker.types import WorkerInfo

log = logging.getLogger("tandem.worker")

WorkerFactory = Callable[[LLMEngine, WorkerInfo, object], BaseWorker]
DEFAULT_CHUNK_TOKENS = 64  # a store chunk; a worker without a store publishes it all the same


def setup_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def drain_on_signals() -> tuple[threading.Event, threading.Event]:
    """``(drain, stop)``: the first SIGTERM or SIGINT sets ``drain`` (finish what the worker holds,
    then deregister and exit), the next one sets ``stop`` (deregister and exit at once)."""
    drain, stop = threading.Event(), threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        if drain.is_set():
            log.warning("%s again: stopping at once", signal.Signals(signum).name)
            stop.set()
        else:
            log.info("%s: draining (send it again to stop at once)", signal.Signals(signum).name)
            drain.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    return drain, stop


def worker_parser(role: str, description: str, writes: str | None) -> argparse.ArgumentParser:
    """The parser of ``tandem serve <role>``: the flags every worker takes, the store flags when the
    role writes chunks to a store node of its own (``writes``: what it writes), the engine's flags."""
    parser = argparse.ArgumentParser(prog=f"tandem serve {role}", description=description)
    add_worker_args(parser, role)
    if writes is not None:
        add_store_args(parser, writes)
    else:  # no store node: the same attributes, fixed
        parser.set_defaults(store_node="", chunk_tokens=DEFAULT_CHUNK_TOKENS)
    add_engine_args(parser)
    return parser


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
    parser.add_argument(
        "--drain-timeout-s", type=positive_seconds, default=30.0,
        help="on SIGTERM / SIGINT, finish the requests held for at most this long, then fail the rest "
        "and exit (default 30; a second signal exits at once)",
    )  # fmt: skip
    parser.add_argument(
        "--handoff-layers", type=int, default=DEFAULT_HANDOFF_LAYERS, metavar="N",
        help="prefill workers: send a prompt's KV to its decode worker N layers at a time, each group "
        "as soon as the prompt's last forward has computed it, so the transfer overlaps the later "
        f"layers; 0 sends it whole after the forward (default {DEFAULT_HANDOFF_LAYERS}; other roles "
        "ignore it)",
    )  # fmt: skip


def positive_seconds(text: str) -> float:
    """An argparse type: a positive number of seconds."""
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text}")
    return value


def add_store_args(parser: argparse.ArgumentParser, writes: str) -> None:
    """The flags of a worker that writes KV chunks to a store node of its own (``writes``: what)."""
    parser.add_argument(
        "--store-node",
        default="",
        help=f"id of this worker's store node, where it writes {writes} ('' = none)",
    )
    parser.add_argument(
        "--chunk-tokens", type=int, default=DEFAULT_CHUNK_TOKENS,
        help="tokens per store chunk (a multiple of the page size; equal on every worker, or keys differ)",
    )  # fmt: skip


def store_client(args: argparse.Namespace):
    """A ``StoreClient`` bound to ``--store-node``, or None without one."""
    if not args.store_node:
        return None
    from kvstore.client import StoreClient

    return StoreClient(args.redis_url, node_id=args.store_node)


def default_worker_id(role: str, inbox_address: str) -> str:
    return f"{role}@{inbox_address.removeprefix('tcp://')}"


def worker_info(args: argparse.Namespace, role: str, engine: LLMEngine, address: str) -> WorkerInfo:
    """What this worker publishes about itself; ``address`` is where others reach its inbox."""
    return WorkerInfo(
        worker_id=args.worker_id or default_worker_id(role, address),
        role=role, address=address, model=engine.model_name, fingerprint=engine.fingerprint.hex(),
        page_size=engine.pool.page_size, chunk_tokens=args.chunk_tokens,
        max_model_len=engine.max_model_len, store_node_id=args.store_node,
        kv_bytes_per_token=engine.kv_bytes_per_token, incarnation=uuid.uuid4().hex[:12],
    )  # fmt: skip


def role_main(worker_class: type[BaseWorker], module_name: str) -> Callable[[list[str] | None], int]:
    """The ``main(argv)`` of ``tandem serve <role>`` for a worker class (see ``BaseWorker``);
    runs it at once when ``module_name`` is ``"__main__"`` (``python -m <role>.main``)."""

    def main(argv: list[str] | None = None) -> int:
        description = " ".join((worker_class.__doc__ or "").split())
        parser = worker_parser(worker_class.ROLE, description, worker_class.WRITES)
        return run_worker_process(parser.parse_args(argv), worker_class.ROLE, worker_class)

    if module_name == "__main__":
        sys.exit(main())
    return main


def run_worker_process(args: argparse.Namespace, role: str, make_worker: WorkerFactory) -> int:
    """A worker process's whole life: engine, inbox, registration, the loop until a SIGTERM /
    SIGINT's drain is done (or a second signal), then deregistration and closing."""
    setup_logging(args.log_level)
    requested, stop = drain_on_signals()  # before loading: a signal meanwhile drains an idle worker
    engine = build_engine(args, args.model)
    inbox = Inbox(args.listen)
    info = worker_info(args, role, engine, args.advertise or inbox.address)
    worker = make_worker(engine, info, store_client(args))
    worker.configure(args)
    if info.store_node_id:
        log.info("%s writes chunks to store node %s", info.worker_id, info.store_node_id)
    log.info("%s ready: inbox %s", info.worker_id, inbox.address)
    drain = Drain(requested, args.drain_timeout_s, worker.start_drain, lambda: len(worker.held()),
                  worker.abandon, worker_id=info.worker_id)  # fmt: skip
    try:
        run_worker_loop(
            info, inbox, WorkerRegistry(args.redis_url), handle=worker.handle, step=worker.step,
            has_work=worker.has_work, report=worker.report, stop=stop, flush=worker.flush, drain=drain,
        )  # fmt: skip
    finally:
        worker.close()
        inbox.close()
    log.info("%s stopped", info.worker_id)
    return 0
