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
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from pathlib import Path

import torch

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


def resolve_python(arg: str | None) -> str | None:
    """``--vllm-python``, else the ``make peer-vllm`` venv if built, else None (with a note)."""
    if arg:
        if not Path(arg).is_file():
            raise ValueError(f"--vllm-python {arg} does not exist (build it with `make peer-vllm`)")
        return arg
    if DEFAULT_PYTHON.is_file():
        return str(DEFAULT_PYTHON)
    print(
        f"no vLLM peer: {DEFAULT_PYTHON} is missing (`make peer-vllm`, or pass --vllm-python); skipping vLLM"
    )
    return None


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
        del qllm
    tandem_threads = {"torch_threads": torch.get_num_threads(), "affinity": sorted(os.sched_getaffinity(0))}
    return {"vllm_version": peer.info["vllm"], "vllm_threads": peer.info["threads"],
            "vllm_omp_binding_log": peer.info["omp_binding_log"], "tandem_threads": tandem_threads,
            "vllm_engine": {"dtype": "float32", "kv_cache_space_gib": 4, "other": "vLLM defaults"},
            "rows": rows}  # fmt: skip


def _print_row(name: str, row: dict) -> None:
    print(
        f"{name}: Tandem {row['tandem']:.1f} / vLLM {row['vllm']:.1f} {row['metric']}"
        f" = {row['tandem_over_vllm']:.2f}"
    )
