"""llama.cpp's batch-1 decode on the GGUF the default model ships as, run with the peer venv's python.

    .peers/llama/bin/python bench/llama_cpp_peer.py --gguf FILE --prompt-len 128 --new-tokens 128

``bench/engine.py`` runs this beside Tandem's quantized batch-1 decode (``make peer-llama`` builds
the venv: ``llama-cpp-python`` compiled from PyPI's source with the machine's compiler). The model
is loaded with ``n_threads`` = the cores this process may use (as Tandem's torch threads); the
prompt (token ids, the same as Tandem's) is evaluated once, then ``new_tokens`` tokens are decoded
one at a time, greedily, with no end-of-sequence stop. One JSON line goes to stdout:
``{"llama_cpp": VERSION, "threads": N, "decode_tokens_per_s": ..., "prefill_tokens_per_s": ...}``;
decode excludes the prompt's evaluation. The fastest of ``--repeats`` runs is reported (Tandem's
row is its mean over steps): where the comparison leans, it leans toward the peer.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time


def _decode_once(llm, prompt: list[int], new_tokens: int) -> tuple[float, float]:
    """(prefill seconds, decode seconds) of one greedy generation of ``new_tokens`` tokens."""
    import numpy as np

    llm.reset()
    start = time.perf_counter()
    llm.eval(prompt)
    token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
    prefilled = time.perf_counter()
    for _ in range(new_tokens - 1):
        llm.eval([token])
        token = int(np.argmax(llm.scores[llm.n_tokens - 1]))
    return prefilled - start, time.perf_counter() - prefilled


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gguf", required=True, help="the GGUF file")
    ap.add_argument("--prompt", required=True, help="JSON list of prompt token ids")
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    import llama_cpp

    prompt = json.loads(args.prompt)
    threads = len(os.sched_getaffinity(0))
    llm = llama_cpp.Llama(
        model_path=args.gguf, n_ctx=len(prompt) + args.new_tokens + 16, n_threads=threads,
        n_threads_batch=threads, n_batch=512, verbose=False,
    )  # fmt: skip
    _decode_once(llm, prompt[:16], 4)  # warm-up
    runs = [_decode_once(llm, prompt, args.new_tokens) for _ in range(args.repeats)]
    prefill_s = min(p for p, _ in runs)
    decode_s = min(d for _, d in runs)
    print(json.dumps({
        "llama_cpp": llama_cpp.__version__, "threads": threads, "gguf": os.path.basename(args.gguf),
        "decode_tokens_per_s": (args.new_tokens - 1) / decode_s, "prefill_tokens_per_s": len(prompt) / prefill_s,
        "runs_s": [[round(p, 4), round(d, 4)] for p, d in runs],
    }))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
