"""vLLM's offline engine on rows of ``bench/engine.py``, run with the peer venv's python.

    .peers/vllm/bin/python bench/vllm_engine_peer.py --model DIR [--spec ROWS.json]

Loads ``vllm.LLM(model=DIR, dtype="float32")`` (``VLLM_CPU_KVCACHE_SPACE=4`` GiB unless set,
offline), warms it up once, then prints one JSON line ``{"ready": true, "vllm": VERSION, ...}`` with
its thread settings. Rows come from ``--spec`` (a JSON list) or from stdin, one JSON object a line:

    {"name": str, "kind": "generate" | "decode", "prompts": [[token id, ...], ...],
     "max_tokens": [int, ...]}

Every request is greedy (temperature 0) with ``ignore_eos``, so each yields exactly its
``max_tokens``; a row whose output counts differ is an error. For each row one JSON line goes to
stdout: ``generate`` rows give the wall time of one ``LLM.generate`` over the whole row (prefix cache
reset first); ``decode`` rows drive ``llm_engine.step()`` and time from the step that gave every
request its first token to the last, so ``decode_tokens_per_s`` excludes prefill (the engine core
runs in its own process, so per-step times would measure the output queue, not the steps).

Only these result lines go to stdout: vLLM's logs (and its engine core's) are sent to stderr.
Run as a script, ``bench/`` is dropped from ``sys.path`` (``bench/kernels.py`` shadows HF's
``kernels``), and ``importlib.metadata.version("vllm")`` is answered for ``vllm-cpu``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _private_stdout():
    """A text stream on the original stdout; fd 1 itself now goes to stderr (vLLM logs to stdout)."""
    out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    return out


def _import_vllm():
    import importlib.metadata

    sys.path[:] = [p for p in sys.path if p and Path(p).resolve() != HERE]
    version = importlib.metadata.version

    def aliased(name: str) -> str:
        return f"{version('vllm_cpu')}+cpu" if name == "vllm" else version(name)

    importlib.metadata.version = aliased
    import vllm

    return vllm


def _params(vllm, max_tokens: int, **kw):
    return vllm.SamplingParams(temperature=0.0, max_tokens=max_tokens, ignore_eos=True, **kw)


def run_generate(vllm, llm, row: dict) -> dict:
    """Wall time of one ``generate`` over the row's requests."""
    prompts = [{"prompt_token_ids": p} for p in row["prompts"]]
    params = [_params(vllm, m) for m in row["max_tokens"]]
    llm.reset_prefix_cache()
    start = time.perf_counter()
    outs = llm.generate(prompts, params, use_tqdm=False)
    seconds = time.perf_counter() - start
    _check_counts(row, [len(o.outputs[0].token_ids) for o in outs])
    return {"seconds": seconds}


def run_decode(vllm, llm, row: dict) -> dict:
    """Decode rate: from every request having its first token to the end, through ``step()``."""
    from vllm.sampling_params import RequestOutputKind

    engine = llm.llm_engine
    llm.reset_prefix_cache()
    counts = {str(i): 0 for i in range(len(row["prompts"]))}
    start = time.perf_counter()
    for rid, (p, m) in zip(counts, zip(row["prompts"], row["max_tokens"])):
        params = _params(vllm, m, output_kind=RequestOutputKind.DELTA)
        engine.add_request(rid, {"prompt_token_ids": p}, params)
    decode_start = None
    while engine.has_unfinished_requests():
        for out in engine.step():
            counts[out.request_id] += len(out.outputs[0].token_ids)
        if decode_start is None and all(counts.values()):
            decode_start, first_counts = time.perf_counter(), dict(counts)
    end = time.perf_counter()
    _check_counts(row, list(counts.values()))
    decoded = sum(counts.values()) - sum(first_counts.values())
    return {"seconds": end - start, "decode_seconds": end - decode_start,
            "decode_tokens": decoded, "decode_tokens_per_s": decoded / (end - decode_start)}  # fmt: skip


def _check_counts(row: dict, got: list[int]) -> None:
    if got != row["max_tokens"]:
        raise RuntimeError(f"row {row['name']}: vLLM gave {got} output tokens, asked {row['max_tokens']}")


def thread_settings() -> dict:
    """vLLM's CPU thread knobs as this process sees them, and each descendant's threads and CPUs."""
    import torch

    keys = ("OMP_NUM_THREADS", "VLLM_CPU_OMP_THREADS_BIND", "VLLM_CPU_NUM_OF_RESERVED_CPU")
    return {"env": {k: os.environ.get(k) for k in keys}, "frontend_torch_threads": torch.get_num_threads(),
            "frontend_cpus": sorted(os.sched_getaffinity(0)), "processes": _descendants(os.getpid())}  # fmt: skip


def _descendants(pid: int) -> dict:
    found = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            lines = Path(f"/proc/{child}/status").read_text().splitlines()
            status = dict(line.split(":\t", 1) for line in lines if ":\t" in line)
            found[child] = {k: status.get(k, "").strip() for k in ("Name", "Threads", "Cpus_allowed_list")}
            found.update(_descendants(int(child)))
    return found


def _rows(spec: str | None):
    if spec:
        yield from json.loads(Path(spec).read_text())
    else:
        for line in sys.stdin:
            if line.strip():
                yield json.loads(line)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="local HF model directory")
    ap.add_argument("--spec", help="JSON file with a list of rows (default: one row per stdin line)")
    args = ap.parse_args(argv)
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "4")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    results = _private_stdout()
    vllm = _import_vllm()
    llm = vllm.LLM(model=args.model, dtype="float32", seed=0)
    llm.generate([{"prompt_token_ids": [100] * 64}] * 4, _params(vllm, 8), use_tqdm=False)  # warm-up
    ready = {"ready": True, "vllm": vllm.__version__, "threads": thread_settings()}
    print(json.dumps(ready), file=results)
    runners = {"generate": run_generate, "decode": run_decode}
    for row in _rows(args.spec):
        result = runners[row["kind"]](vllm, llm, row)
        print(json.dumps({"name": row["name"], **result}), file=results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
