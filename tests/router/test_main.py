"""``router.main``: the command line, and a real router process started and stopped by signal."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from router.main import build_parser, config_from_args, main

ROOT = Path(__file__).resolve().parents[2]


def test_help_lists_the_flags(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--model", "--redis-url", "--policy", "--ttft-slo-ms", "--tbt-slo-ms", "--served-model-name",
                 "--inbox", "--request-timeout-s", "cache_aware"):  # fmt: skip
        assert flag in out


def test_config_from_args(default_model):
    args = build_parser().parse_args(
        ["--model", str(default_model), "--redis-url", "redis://127.0.0.1:1", "--ttft-slo-ms", "250",
         "--policy", "prefix", "--served-model-name", "small"]
    )  # fmt: skip
    config = config_from_args(args)
    assert config.slo.ttft_s == 0.25 and config.policy == "prefix" and config.model_name == "small"
    assert config.costs.kv_bytes_per_token == 0  # no override: each worker publishes its own
    args = build_parser().parse_args(
        ["--model", str(default_model), "--redis-url", "redis://127.0.0.1:1", "--kv-bytes-per-token", "46080"]
    )
    assert config_from_args(args).costs.kv_bytes_per_token == 30 * 2 * 3 * 64 * 4  # SmolLM2-135M, float32


def test_bad_arguments_exit_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["--model", str(tmp_path / "nope"), "--redis-url", "redis://127.0.0.1:1"])
    assert e.value.code == 2 and "not a directory" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["--model", str(tmp_path), "--redis-url", "redis://127.0.0.1:1"])
    assert e.value.code == 2 and "tokenizer.json" in capsys.readouterr().err


def test_router_imports_without_torch():
    code = "import sys, router.main, router.app; bad = {'torch', 'triton', 'engine', 'transformers'} & set(sys.modules); assert not bad, bad"
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=60)


def test_process_serves_and_stops_on_sigterm(redis_server, default_model, tmp_path):
    port_file = tmp_path / "port"  # --port 0: the router picks a free port and reports it, no race
    argv = ["--model", str(default_model), "--redis-url", redis_server.url, "--port", "0",
            "--port-file", str(port_file), "--log-level", "warning"]  # fmt: skip
    proc = subprocess.Popen([sys.executable, "-m", "router.main", *argv], cwd=ROOT)
    try:
        deadline = time.monotonic() + 20
        while not port_file.exists():
            assert proc.poll() is None and time.monotonic() < deadline, "router did not listen"
            time.sleep(0.1)
        port = int(port_file.read_text())
        while True:
            try:
                r = requests.get(f"http://127.0.0.1:{port}/v1/models", timeout=1)
                break
            except requests.ConnectionError:
                assert proc.poll() is None and time.monotonic() < deadline, "router did not come up"
                time.sleep(0.1)
        assert r.json()["data"][0]["id"] == default_model.name
        with socket.create_connection(
            ("127.0.0.1", port), timeout=10
        ) as conn:  # a 128 KiB request head: over the 64 KiB bound
            conn.sendall(b"GET /v1/models HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (128 << 10) + b"\r\n\r\n")
            assert conn.recv(100).startswith(b"HTTP/1.1 400 ")
        assert requests.get(f"http://127.0.0.1:{port}/v1/models", timeout=5).status_code == 200
        assert requests.get(f"http://127.0.0.1:{port}/ready", timeout=1).status_code == 503  # no workers
        assert requests.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200  # alive
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) in (
            0,
            -signal.SIGTERM,
        )  # uvicorn re-raises the signal after a clean shutdown
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
