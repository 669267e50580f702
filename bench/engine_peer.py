"""vLLM beside Tandem's engine in ``bench/engine.py``: the peer process and the side-by-side rows.

``VllmPeer`` runs ``bench/vllm_engine_peer.py`` under the vLLM venv's python (``make peer-vllm``)
and sends it one row at a time; ``compare_with_vllm`` measures each row on Tandem, then on vLLM
(alternating, same prompts, same output lengths, greedy, ``ignore_eos``) and reports
Tandem / vLLM throughput. Rows:

- ``mixed``: the end-to-end workload (``--num-requests`` seeded requests), output tok/s of one
  ``generate`` over all of them;
- ``decode_b32`` / ``decode_b1``: 32 or 1 sequences, 128-token prompts, 128 new tokens; decode
  tok/s with prefill excluded (Tandem: mean pure-decode ``step()`` time; vLLM: wall time from every
  request having its first token to the end);
- ``prefill``: 8 x ``--prefill-len`` prompts, ``max_tokens=1``; prompt tok/s.

With a llama.cpp venv (``make peer-llama``, or ``--llama-python``), the int4 batch-1 row also runs
``bench/llama_cpp_peer.py`` on the GGUF the default model ships as (its own Q4_1 weights), the
same prompt and length: Tandem int4 / llama.cpp.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from pathlib import Path

import torch

from bench import cluster_proc
from bench.engine import (
    FlopModel,
    decode_prompts,
    measure_decode,
    measure_prefill,
    prefill_prompts,
    run_engine,
)
from bench.vllm_cli import omp_binding_log
from engine import LLM, SamplingParams

PEER_SCRIPT = Path(__file__).resolve().parent / "vllm_engine_peer.py"
DEFAULT_PYTHON = Path(__file__).resolve().parents[1] / ".peers" / "vllm" / "bin" / "python"
LLAMA_SCRIPT = Path(__file__).resolve().parent / "llama_cpp_peer.py"
LLAMA_PYTHON = Path(__file__).resolve().parents[1] / ".peers" / "llama" / "bin" / "python"
DECODE_PROMPT_LEN, DECODE_NEW_TOKENS = 128, 128


class VllmPeer:
    """``bench/vllm_engine_peer.py`` in a child process; its log goes to a temporary file."""

    def __init__(self, python: str, model_dir: str) -> None:
        self.model_dir = model_dir
        log_fd, log_path = tempfile.mkstemp(prefix="vllm-peer-", suffix=".log")
        self.log = Path(log_path)
        print(f"starting vLLM peer ({python}); log {self.log}")
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        self.proc = subprocess.Popen(
            [python, str(PEER_SCRIPT), "--model", model_dir],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log_fd, text=True, env=env,
        )  # fmt: skip
        os.close(log_fd)
        self.info = self._read()
        self.info["omp_binding_log"] = omp_binding_log(self.log.read_text())

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"vLLM peer exited with {self.proc.wait()}; see {self.log}")
        return json.loads(line)

    def run(self, name: str, kind: str, prompts: list[list[int]], max_tokens: list[int]) -> dict:
        row = {"name": name, "kind": kind, "prompts": prompts, "max_tokens": max_tokens}
        self.proc.stdin.write(json.dumps(row) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


def resolve_python(arg: str | None, default: Path | None = None, peer: str = "vllm") -> str | None:
    """``--<peer>-python``, else the ``make peer-<peer>`` venv (``default``: vLLM's) if built, else
    None (with a note)."""
    default = default or DEFAULT_PYTHON
    if arg:
        if not Path(arg).is_file():
            raise ValueError(f"--{peer}-python {arg} does not exist (build it with `make peer-{peer}`)")
        return arg
    if default.is_file():
        return str(default)
    print(f"no {peer} peer: {default} is missing (`make peer-{peer}`, or pass --{peer}-python); skipping it")
    return None


def llama_cpp_decode(python: str, vocab: int) -> dict:
    """llama.cpp's batch-1 decode of the default model's GGUF on ``decode_prompts``' prompt."""
    prompt = decode_prompts(vocab, 1, DECODE_PROMPT_LEN)[0]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run(
        [python, str(LLAMA_SCRIPT), "--gguf", cluster_proc.default_gguf_path(), "--prompt", json.dumps(prompt),
         "--new-tokens", str(DECODE_NEW_TOKENS)],
        capture_output=True, text=True, env=env, check=False,
    )  # fmt: skip
    if out.returncode != 0:
        raise RuntimeError(f"llama.cpp peer failed ({out.returncode}): {out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _row(metric: str, tandem: float, vllm: float, **detail) -> dict:
    return {"metric": metric, "tandem": tandem, "vllm": vllm, "tandem_over_vllm": tandem / vllm, **detail}


def _mixed(llm: LLM, peer: VllmPeer, reqs, _flops, _vocab, _args) -> dict:
    useful = sum(o for _, o in reqs)
    llm.engine.pool.reset_prefix_cache()
    tandem_s = run_engine(llm, reqs)
    vllm_s = peer.run("mixed", "generate", [p for p, _ in reqs], [o for _, o in reqs])["seconds"]
    return _row(
        "output tok/s", useful / tandem_s, useful / vllm_s, tandem_seconds=tandem_s, vllm_seconds=vllm_s
    )


def _decode(batch: int):
    def measure(llm: LLM, peer: VllmPeer, _reqs, flops: FlopModel, vocab: int, _args) -> dict:
        llm.engine.pool.reset_prefix_cache()
        tandem = measure_decode(llm, flops, vocab, batch, DECODE_PROMPT_LEN, DECODE_NEW_TOKENS - 1)
        prompts = decode_prompts(vocab, batch, DECODE_PROMPT_LEN)
        vllm = peer.run(f"decode_b{batch}", "decode", prompts, [DECODE_NEW_TOKENS] * batch)
        return _row("decode tok/s", tandem["tokens_per_s_mean"], vllm["decode_tokens_per_s"],
                    tandem_detail=tandem, vllm_detail=vllm)  # fmt: skip

    return measure


def _prefill(llm: LLM, peer: VllmPeer, _reqs, flops: FlopModel, vocab: int, args) -> dict:
    n, length = 8, args.prefill_len
    tandem = measure_prefill(llm, flops, vocab, length, n)
    vllm_s = peer.run("prefill", "generate", prefill_prompts(vocab, length, n), [1] * n)["seconds"]
    return _row("prompt tok/s", tandem["tokens_per_s"], n * length / vllm_s, vllm_seconds=vllm_s)


MEASURE = {"mixed": _mixed, "decode_b32": _decode(32), "decode_b1": _decode(1), "prefill": _prefill}


def compare_with_vllm(llm: LLM, peer: VllmPeer, reqs, flops: FlopModel, vocab: int, args) -> dict:
    """Each row of ``args.rows`` on Tandem then vLLM; ``args.vllm_quantization`` adds batch-1 rows
    of Tandem with quantized weights against vLLM fp32 (vLLM measured again beside each)."""
    rows = {}
    for name in args.rows:
        rows[name] = MEASURE[name](llm, peer, reqs, flops, vocab, args)
        _print_row(name, rows[name])
    for method in args.vllm_quantization:
        qllm = LLM(peer.model_dir, dtype="float32", quantization=method, max_num_seqs=8, num_pages=512)
        qllm.generate([[100] * 16], SamplingParams(temperature=0.0, max_tokens=2))  # warm-up
        rows[f"decode_b1_{method}"] = _decode(1)(qllm, peer, reqs, flops, vocab, args)
        _print_row(f"decode_b1 Tandem {method} vs vLLM fp32", rows[f"decode_b1_{method}"])
        if method == "int4" and args.llama_python:
            rows["decode_b1_int4_vs_llama_cpp"] = _versus_llama(
                rows["decode_b1_int4"], args.llama_python, vocab
            )
        del qllm
    tandem_threads = {"torch_threads": torch.get_num_threads(), "affinity": sorted(os.sched_getaffinity(0))}
    return {"vllm_version": peer.info["vllm"], "vllm_threads": peer.info["threads"],
            "vllm_omp_binding_log": peer.info["omp_binding_log"], "tandem_threads": tandem_threads,
            "vllm_engine": {"dtype": "float32", "kv_cache_space_gib": 4, "other": "vLLM defaults"},
            "rows": rows}  # fmt: skip


def _versus_llama(int4_row: dict, python: str, vocab: int) -> dict:
    llama = llama_cpp_decode(python, vocab)
    tandem = int4_row["tandem"]
    row = {"metric": "decode tok/s", "tandem_int4": tandem, "llama_cpp_q4_1": llama["decode_tokens_per_s"],
           "tandem_over_llama_cpp": tandem / llama["decode_tokens_per_s"], "llama_cpp_detail": llama}  # fmt: skip
    print(f"decode_b1 Tandem int4 vs llama.cpp {llama['llama_cpp']} on the GGUF (Q4_1): "
          f"{tandem:.1f} / {llama['decode_tokens_per_s']:.1f} tok/s = {row['tandem_over_llama_cpp']:.2f}")  # fmt: skip
    return row


def _print_row(name: str, row: dict) -> None:
    print(
        f"{name}: Tandem {row['tandem']:.1f} / vLLM {row['vllm']:.1f} {row['metric']}"
        f" = {row['tandem_over_vllm']:.2f}"
    )
