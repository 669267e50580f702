"""vLLM's command line from the peer venv (``make peer-vllm``): its serving client against any
server, its server as a child process, and the shared pieces of the benchmarks that use them.

Both run through ``bench/vllm_launcher.py`` under the peer venv's python (the project does not
depend on vLLM), offline (``HF_HUB_OFFLINE=1``: the tokenizer and model are local directories).

- ``run_bench_serve``: one ``vllm bench serve`` run (random dataset, ``ignore_eos``) and its result
  file boiled down by ``summarize``;
- ``VllmServer``: ``vllm serve MODEL`` in a process group of its own, polled on ``/health`` until it
  serves, stopped by that group.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import subprocess
from collections.abc import Callable, Sequence
from pathlib import Path

from bench.cluster_proc import thread_report, wait_serving

ROOT = Path(__file__).resolve().parents[1]
LAUNCHER = Path(__file__).resolve().parent / "vllm_launcher.py"
ENDPOINTS = {"openai": "/v1/completions", "openai-chat": "/v1/chat/completions"}
# vLLM's result fields kept per run (the rest, per-request lists included, stay in its file).
SUMMARY_FIELDS = (
    "duration", "completed", "failed", "total_input_tokens", "total_output_tokens", "request_throughput",
    "output_throughput", "median_ttft_ms", "p99_ttft_ms", "median_tpot_ms", "p99_tpot_ms", "median_itl_ms",
)  # fmt: skip
# vLLM's CPU thread knobs (unset: vLLM binds its compute threads itself and logs how).
THREAD_ENV = ("OMP_NUM_THREADS", "VLLM_CPU_OMP_THREADS_BIND", "VLLM_CPU_NUM_OF_RESERVED_CPU")


def offline_env() -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


def dist_versions(python: str, *names: str) -> dict[str, str]:
    """The installed version of each distribution ``names`` in ``python``'s environment."""
    code = f"import importlib.metadata as m, json; print(json.dumps({{n: m.version(n) for n in {names!r}}}))"
    out = subprocess.run([python, "-c", code], capture_output=True, text=True, check=True, env=offline_env())
    return json.loads(out.stdout)


def vllm_version(vllm_python: str) -> str:
    return dist_versions(vllm_python, "vllm_cpu")["vllm_cpu"]


def omp_binding_log(log_text: str) -> list[str]:
    """The lines in which vLLM's CPU worker says which cores its OpenMP threads are bound to."""
    return [
        line.split("] ", 1)[-1].strip() for line in log_text.splitlines()
        if "ompmultiprocessing" in line or "Reducing Torch threads" in line
    ]  # fmt: skip


def add_client_args(
    ap: argparse.ArgumentParser,
    per: str,
    num_prompts: int,
    input_len: int,
    output_len: int,
    max_concurrency: int,
    timeout_s: float,
) -> None:
    """The options that ``bench_serve_cmd`` and ``run_bench_serve`` read, with these defaults (``per``
    names what one client run measures): ``--vllm-python``, the workload, ``--model``, ``--seed``,
    ``--timeout-s``."""
    ap.add_argument(
        "--vllm-python", default=str(ROOT / ".peers" / "vllm" / "bin" / "python"),
        help="python of a venv with vLLM's CPU build (default .peers/vllm/bin/python: `make peer-vllm`)",
    )  # fmt: skip
    ap.add_argument(
        "--num-prompts", type=int, default=num_prompts, help=f"requests per {per} (default {num_prompts})"
    )
    ap.add_argument(
        "--input-len", type=int, default=input_len, help=f"random prompt tokens (default {input_len})"
    )
    ap.add_argument(
        "--output-len", type=int, default=output_len, help=f"output tokens, ignore_eos (default {output_len})"
    )
    ap.add_argument(
        "--max-concurrency", type=int, default=max_concurrency,
        help=f"requests in flight at most (default {max_concurrency})",
    )  # fmt: skip
    ap.add_argument(
        "--model",
        help="HF model directory, also the tokenizer (default: SmolLM2-135M-Instruct via `tandem convert`)",
    )
    ap.add_argument("--seed", type=int, default=0, help="the client's dataset seed (default 0)")
    ap.add_argument(
        "--timeout-s",
        type=float,
        default=timeout_s,
        help=f"limit for one {per}'s run (default {timeout_s:.0f})",
    )


def bench_serve_cmd(
    args: argparse.Namespace, backend: str, url: str, model: str, result_file: Path
) -> list[str]:
    return [
        args.vllm_python, str(LAUNCHER), "bench", "serve",
        "--backend", backend, "--base-url", url, "--endpoint", ENDPOINTS[backend],
        "--model", model, "--tokenizer", args.model,
        "--dataset-name", "random", "--random-input-len", str(args.input_len),
        "--random-output-len", str(args.output_len), "--num-prompts", str(args.num_prompts),
        "--max-concurrency", str(args.max_concurrency), "--ignore-eos", "--seed", str(args.seed),
        "--percentile-metrics", "ttft,tpot,itl,e2el", "--metric-percentiles", "50,99",
        "--save-result", "--save-detailed",
        "--result-dir", str(result_file.parent), "--result-filename", result_file.name,
    ]  # fmt: skip


def summarize(result: dict, output_len: int) -> dict:
    """vLLM's result JSON → the summary fields, the error of every request that failed, and every
    completed request whose ``usage.completion_tokens`` is not ``output_len`` (with ``ignore_eos``
    each must generate exactly what it asked for)."""
    summary = {k: result.get(k) for k in SUMMARY_FIELDS}
    if summary["failed"] is None:  # older clients report only what completed
        summary["failed"] = result["num_prompts"] - result["completed"]
    summary["errors"] = [{"index": i, "error": e} for i, e in enumerate(result.get("errors") or []) if e]
    summary["wrong_output_lens"] = [
        {"index": i, "output_tokens": n}
        for i, (n, e) in enumerate(zip(result.get("output_lens") or [], result.get("errors") or []))
        if not e and n != output_len
    ]
    return summary


def run_bench_serve(args: argparse.Namespace, backend: str, url: str, model: str, work_dir: Path) -> dict:
    """One ``vllm bench serve`` run; its output (progress bar included) goes to this terminal, its
    result file to ``work_dir``. ``client_exit`` and either ``summarize``'s fields or a
    ``client_error`` saying why there is no result."""
    result_file = work_dir / f"vllm-{backend}.json"
    cmd = bench_serve_cmd(args, backend, url, model, result_file)
    print(f"\n== {backend} ({ENDPOINTS[backend]}) ==\n$ {' '.join(cmd)}", flush=True)
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env=offline_env(), timeout=args.timeout_s, check=False)
    except subprocess.TimeoutExpired:
        return {"client_exit": None, "client_error": f"vllm bench serve ran past {args.timeout_s:.0f}s"}
    if not result_file.exists():  # it failed before measuring (e.g. its first test request failed)
        return {"client_exit": proc.returncode, "client_error": "vllm bench serve wrote no result; see above"}
    return {"client_exit": proc.returncode, **summarize(json.loads(result_file.read_text()), args.output_len)}


def failed(run: dict) -> bool:
    return (
        run["client_exit"] != 0
        or "client_error" in run
        or run["failed"] > 0
        or bool(run["errors"])
        or bool(run["wrong_output_lens"])
    )


Column = tuple[str, Callable[[dict], object]]  # header, the value of one run (floats: 1 decimal)


def table(label: str, runs: dict[str, dict], columns: Sequence[Column]) -> str:
    """One row per run, named under ``label``: its columns, or its ``client_error`` instead."""
    first = max(len(label), *(len(name) for name in runs))
    widths = [max(len(header), 8) for header, _ in columns]
    rows = [" ".join([f"{label:<{first}}", *(f"{h:>{w}}" for (h, _), w in zip(columns, widths))])]
    for name, run in runs.items():
        if "client_error" in run:
            rows.append(f"{name:<{first}} {run['client_error']}")
            continue
        values = (value(run) for _, value in columns)
        cells = (f"{v:>{w}.1f}" if isinstance(v, float) else f"{v!s:>{w}}" for v, w in zip(values, widths))
        rows.append(" ".join([f"{name:<{first}}", *cells]))
    return "\n".join(rows)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_env() -> dict[str, str]:
    """``vllm serve``'s environment: offline, ``VLLM_CPU_KVCACHE_SPACE=4`` (GiB) unless set, no
    ``PYTHONPATH`` (the project's packages would shadow vLLM's imports, as ``bench/`` would: the
    launcher drops that from ``sys.path``)."""
    env = {k: v for k, v in offline_env().items() if k != "PYTHONPATH"}
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", "4")
    return env


class VllmServer:
    """``vllm serve MODEL_DIR`` on a free loopback port, in a session (so a process group) of its
    own, its output in ``log_path``, its environment ``server_env()``. ``stop()`` ends the whole
    group."""

    def __init__(
        self, vllm_python: str, model_dir: str, log_path: Path, serve_args: Sequence[str] = ()
    ) -> None:
        self.url = f"http://127.0.0.1:{free_port()}"
        self.log_path = log_path
        self.env = server_env()
        self.cmd = [vllm_python, str(LAUNCHER), "serve", model_dir, "--host", "127.0.0.1",
                    "--port", self.url.rsplit(":", 1)[1], *serve_args]  # fmt: skip
        self._log = open(log_path, "w")  # noqa: SIM115 (closed in stop)
        self.popen = subprocess.Popen(
            self.cmd, cwd=ROOT, env=self.env, stdin=subprocess.DEVNULL, stdout=self._log,
            stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip

    def wait_healthy(self, timeout_s: float) -> None:
        """Until ``/health`` answers (vLLM opens its port once the engine has loaded and warmed up)."""
        wait_serving(self.popen, lambda: f"{self.url}/health", "`vllm serve`", self.log_path, timeout_s)

    def threads(self) -> dict:
        """Its thread knobs, where its worker bound its OpenMP threads, and its processes now."""
        return {"env": {k: self.env.get(k) for k in THREAD_ENV},
                "omp_binding_log": omp_binding_log(self.log_path.read_text()),
                "processes": thread_report(self.popen.pid)}  # fmt: skip

    def stop(self, grace_s: float = 60.0) -> None:
        """SIGTERM to the group (the API server stops its engine core); past ``grace_s``, or for
        anything of the group still alive after its leader exits, SIGKILL."""
        if self.popen.poll() is None:
            os.killpg(self.popen.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(timeout=grace_s)
        with contextlib.suppress(ProcessLookupError):  # the group is empty: all exited
            os.killpg(self.popen.pid, signal.SIGKILL)
        self.popen.wait()
        self._log.close()
