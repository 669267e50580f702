"""``tandem serve router``: the OpenAI-compatible front end and conductor, on uvicorn, until
SIGTERM / SIGINT (then it drains: see ``router.server``).

    python -m router.main --model DIR --redis-url redis://127.0.0.1:6379 [--port 8000]
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
from pathlib import Path

from router.conductor import DEFAULT_POLICY, POLICY_NAMES, CostModel, Slo
from router.conductor.profile import default_costs
from router.config import RouterConfig

DESCRIPTION = """\
Run the router: OpenAI-compatible HTTP API (/v1/completions, /v1/chat/completions, /v1/models,
/health, /metrics). It tokenizes with the model directory's tokenizer and chat template, picks a
prefill and a decode worker (or one colocated worker) for every request from the workers
registered in Redis, and streams their tokens back. Requests that would break the TTFT or TBT
SLO are rejected early with 429 and Retry-After (policy cache_aware only)."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tandem serve router",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_serving_args(p)
    _add_request_args(p)
    _add_edge_args(p)
    _add_cost_args(p.add_argument_group("cost model (what the conductor predicts TTFT and TBT from)"))
    p.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING or ERROR")
    p.add_argument(
        "--drain-timeout-s", type=_positive_s, default=30.0,
        help="on SIGTERM / SIGINT, stop accepting connections and give the requests in flight this "
        "long to finish (default 30; a second signal stops at once)",
    )  # fmt: skip
    return p


def _add_serving_args(p: argparse.ArgumentParser) -> None:
    """What the router serves, where, and how it reaches the workers."""
    p.add_argument(
        "--model", required=True, type=Path, help="HF model directory (tokenizer, chat template, config)"
    )
    p.add_argument(
        "--redis-url", required=True, help="worker registry and KV index, e.g. redis://127.0.0.1:6379"
    )
    p.add_argument("--host", default="127.0.0.1", help="HTTP bind address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="HTTP port (default 8000; 0: any free port)")
    p.add_argument(
        "--port-file", type=Path, default=None,
        help="write the bound port here once listening (with --port 0: how a launcher learns it)",
    )  # fmt: skip
    p.add_argument(
        "--served-model-name", default="", help="the model name clients use (default: the directory name)"
    )
    p.add_argument(
        "--inbox", default="tcp://127.0.0.1:0", help="ZeroMQ address for worker events (default: any port)"
    )
    p.add_argument("--advertise-inbox", help="address workers send events to (default: the bound inbox)")


def _add_request_args(p: argparse.ArgumentParser) -> None:
    """How requests are routed, admitted, retried and capped."""
    p.add_argument(
        "--policy", default=DEFAULT_POLICY, choices=POLICY_NAMES,
        help="routing policy (default cache_aware: min predicted TTFT from cache locality, load and cost models)",
    )  # fmt: skip
    p.add_argument(
        "--ttft-slo-ms", type=float, default=30_000, help="time-to-first-token SLO (default 30000)"
    )
    p.add_argument("--tbt-slo-ms", type=float, default=5_000, help="time-between-tokens SLO (default 5000)")
    p.add_argument(
        "--request-timeout-s", type=float, default=None,
        help="fail (504) and abort on the workers a request not complete after this long, streamed or "
        "not (default: no limit)",
    )  # fmt: skip
    p.add_argument(
        "--event-timeout-s", type=float, default=120.0,
        help="fail a request that receives no worker event for this long (default 120)",
    )  # fmt: skip
    p.add_argument(
        "--max-in-flight", type=int, default=1024,
        help="requests served at once; beyond it a request gets 429 with Retry-After, whatever the "
        "policy (default 1024; 0: no limit)",
    )  # fmt: skip
    p.add_argument(
        "--max-retries", type=int, default=1,
        help="route a request a worker failed (dead, unreachable, refused the KV) again, to other workers, "
        "this many times while nothing of its response was sent (default 1)",
    )  # fmt: skip
    p.add_argument(
        "--default-max-tokens", type=int, default=256,
        help="max_tokens of chat requests that set none (default 256; completions: 16, as OpenAI)",
    )  # fmt: skip


def _add_edge_args(p: argparse.ArgumentParser) -> None:
    """Who may call, how much a request may send, and how long Redis may be gone."""
    p.add_argument(
        "--api-key", default=os.environ.get("TANDEM_API_KEY") or None,
        help="require 'Authorization: Bearer KEY' on every path but --open-paths "
        "(default: $TANDEM_API_KEY; unset: no key; prefer the variable: a flag shows in `ps`)",
    )  # fmt: skip
    p.add_argument(
        "--open-paths", default="/health,/metrics,/dashboard",
        help="comma-separated paths that need no API key (default /health,/metrics,/dashboard)",
    )  # fmt: skip
    p.add_argument(
        "--registry-grace-s", type=float, default=30.0,
        help="while Redis cannot be read, keep routing with the last view of the workers this long (default 30)",
    )  # fmt: skip
    p.add_argument(
        "--max-body-bytes", type=int, default=8 << 20,
        help="refuse request bodies larger than this with a 413 (default 8 MiB)",
    )  # fmt: skip
    p.add_argument(
        "--body-timeout-s", type=float, default=30.0,
        help="answer 408 to a request whose body has not arrived in full after this long (default 30)",
    )  # fmt: skip


def _add_cost_args(costs: argparse._ArgumentGroup) -> None:
    d = default_costs()  # the cpu-smollm2 profile's (router/conductor/profiles, fitted by the benchmarks)
    for flag, default, what in (
        ("--prefill-fixed-ms", d.prefill_fixed_s * 1e3, "per prefill, until the worker reports its own fit (fitted: bench/profile_fit.py)"),
        ("--prefill-per-token-ms", d.prefill_per_token_s * 1e3, "per uncached prompt token, likewise"),
        ("--fetch-fixed-ms", d.fetch_fixed_s * 1e3, "per fetch from a store node (fitted: bench/results/transfer.json)"),
        ("--fetch-per-byte-ns", d.fetch_per_byte_s * 1e9, "per fetched KV byte (fitted likewise)"),
        ("--disk-fixed-ms", d.disk_fixed_s * 1e3, "per read from a store node's disk tier (fitted likewise)"),
        ("--disk-per-byte-ns", d.disk_per_byte_s * 1e9, "per KV byte read from a disk tier (fitted likewise)"),
        ("--decode-base-ms", d.decode_base_s * 1e3, "floor of a decode step's time (fitted likewise)"),
        ("--decode-per-seq-ms", d.decode_per_seq_s * 1e3, "added per sequence joining a decode batch (fitted likewise)"),
    ):  # fmt: skip
        costs.add_argument(flag, type=float, default=default, help=f"{what} (default %(default)g)")
    costs.add_argument(
        "--kv-bytes-per-token", type=int, default=d.kv_bytes_per_token,
        help="KV bytes per token a fetch moves (default 0: what each worker publishes for its model and dtype)",
    )  # fmt: skip


def config_from_args(args: argparse.Namespace) -> RouterConfig:
    """Raises ``ValueError`` naming the bad value."""
    costs = CostModel(
        prefill_fixed_s=args.prefill_fixed_ms / 1e3,
        prefill_per_token_s=args.prefill_per_token_ms / 1e3,
        fetch_fixed_s=args.fetch_fixed_ms / 1e3,
        fetch_per_byte_s=args.fetch_per_byte_ns / 1e9,
        disk_fixed_s=args.disk_fixed_ms / 1e3,
        disk_per_byte_s=args.disk_per_byte_ns / 1e9,
        decode_base_s=args.decode_base_ms / 1e3,
        decode_per_seq_s=args.decode_per_seq_ms / 1e3,
        kv_bytes_per_token=args.kv_bytes_per_token,
    )
    return RouterConfig(
        model_dir=args.model,
        redis_url=args.redis_url,
        served_model_name=args.served_model_name,
        policy=args.policy,
        slo=Slo(ttft_s=args.ttft_slo_ms / 1e3, tbt_s=args.tbt_slo_ms / 1e3),
        costs=costs,
        inbox=args.inbox,
        advertise_inbox=args.advertise_inbox,
        request_timeout_s=args.request_timeout_s,
        event_timeout_s=args.event_timeout_s,
        max_in_flight=args.max_in_flight or None,
        max_retries=args.max_retries,
        default_max_tokens=args.default_max_tokens,
        max_body_bytes=args.max_body_bytes,
        registry_grace_s=args.registry_grace_s,
        api_key=args.api_key,
        open_paths=tuple(p.strip() for p in args.open_paths.split(",") if p.strip()),
        body_timeout_s=args.body_timeout_s,
    )


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(argv)
    except KeyboardInterrupt:  # Ctrl-C before the server took over the signals (loading)
        return 130


def _main(argv: list[str] | None) -> int:
    from router.app import create_app

    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if not args.model.is_dir():
        parser.error(f"--model {args.model} is not a directory")
    try:
        app = create_app(config_from_args(args))
    except ValueError as e:
        parser.error(str(e))
    try:
        sock = _bind(args.host, args.port)
    except OSError as e:
        parser.error(f"cannot listen on {args.host}:{args.port}: {e}")
    port = sock.getsockname()[1]
    logging.getLogger(__name__).info("router on http://%s:%d (policy %s)", args.host, port, args.policy)
    if args.port_file is not None:
        _write_atomically(args.port_file, f"{port}\n")
    return _serve(app, sock, args)


def _serve(app, sock: socket.socket, args: argparse.Namespace) -> int:
    """Serve ``app`` on ``sock`` until SIGTERM / SIGINT, then drain (``router.server``)."""
    import uvicorn

    from router.server import DrainingServer

    config = uvicorn.Config(
        app, log_level=args.log_level.lower(), access_log=False, http="h11",
        h11_max_incomplete_event_size=MAX_HEADER_BYTES,  # larger request heads: 400, connection closed
        timeout_graceful_shutdown=args.drain_timeout_s,
    )  # fmt: skip
    server = DrainingServer(config, app)
    server.run(sockets=[sock])
    return 0 if server.started else 1  # not started: startup failed (logged)


MAX_HEADER_BYTES = 64 << 10


def _positive_s(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text}")
    return value


def _bind(host: str, port: int) -> socket.socket:
    """The listening socket, bound here so that port 0 resolves before anyone is told the address."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(2048)
    except OSError:
        sock.close()
        raise
    return sock


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


if __name__ == "__main__":
    raise SystemExit(main())
