"""The vLLM side of ``bench/engine.py`` without vLLM: the row protocol against a stand-in peer, the
peer script's own checks, and how the peer's python is chosen."""

from __future__ import annotations

import json
import stat
import sys
from pathlib import Path

import pytest

from bench import engine_peer, vllm_engine_peer
from bench.engine import decode_prompts, prefill_prompts

FAKE_PEER = f"""#!{sys.executable}
import json, sys
print("a log line on stderr", file=sys.stderr)
print(json.dumps({{"ready": True, "vllm": "fake", "threads": {{"argv": sys.argv[1:]}}}}), flush=True)
for line in sys.stdin:
    row = json.loads(line)
    print(json.dumps({{"name": row["name"], "seconds": float(sum(row["max_tokens"]))}}), flush=True)
"""


@pytest.fixture
def fake_python(tmp_path):
    path = tmp_path / "python"
    path.write_text(FAKE_PEER)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


def test_rows_go_out_and_results_come_back_one_line_each(fake_python):
    peer = engine_peer.VllmPeer(fake_python, "/models/m")
    try:
        assert peer.info["vllm"] == "fake"
        assert peer.info["threads"]["argv"] == [str(engine_peer.PEER_SCRIPT), "--model", "/models/m"]
        assert peer.run("a", "generate", [[1, 2], [3]], [4, 5]) == {"name": "a", "seconds": 9.0}
        assert peer.run("b", "decode", [[1]], [7]) == {"name": "b", "seconds": 7.0}
    finally:
        peer.close()
    assert peer.proc.returncode == 0


def test_a_peer_that_dies_is_an_error_naming_its_log(tmp_path):
    dead = tmp_path / "python"
    dead.write_text(f"#!{sys.executable}\nimport sys\nprint('no vllm here', file=sys.stderr)\nsys.exit(3)\n")
    dead.chmod(dead.stat().st_mode | stat.S_IXUSR)
    with pytest.raises(RuntimeError, match="exited with 3") as err:
        engine_peer.VllmPeer(str(dead), "/models/m")
    log = str(err.value).rsplit("see ", 1)[1]
    assert "no vllm here" in Path(log).read_text()


def test_the_peer_script_rejects_wrong_output_counts_and_reads_spec_files(tmp_path):
    row = {"name": "r", "kind": "generate", "prompts": [[1]], "max_tokens": [3]}
    vllm_engine_peer._check_counts(row, [3])
    with pytest.raises(RuntimeError, match="row r: vLLM gave \\[2\\]"):
        vllm_engine_peer._check_counts(row, [2])
    spec = tmp_path / "rows.json"
    spec.write_text(json.dumps([row, row]))
    assert list(vllm_engine_peer._rows(str(spec))) == [row, row]


def test_peer_python_choice(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="make peer-vllm"):
        engine_peer.resolve_python(str(tmp_path / "missing"))
    monkeypatch.setattr(engine_peer, "DEFAULT_PYTHON", tmp_path / "missing")
    assert engine_peer.resolve_python(None) is None
    (tmp_path / "python").touch()
    assert engine_peer.resolve_python(str(tmp_path / "python")) == str(tmp_path / "python")
    monkeypatch.setattr(engine_peer, "DEFAULT_PYTHON", tmp_path / "python")
    assert engine_peer.resolve_python(None) == str(tmp_path / "python")


def test_both_engines_get_the_same_seeded_prompts():
    assert decode_prompts(1000, 4, 16) == decode_prompts(1000, 4, 16)
    assert decode_prompts(1000, 1, 16) == decode_prompts(1000, 4, 16)[:1]  # one seeded stream
    prompts = prefill_prompts(1000, 32, 3)
    assert [len(p) for p in prompts] == [32] * 3 and all(100 <= t < 1000 for p in prompts for t in p)


def test_the_llama_cpp_row_runs_the_peer_script_on_the_ggufs_prompt(tmp_path, monkeypatch):
    """``llama_cpp_decode`` hands the peer script the GGUF and Tandem's own decode prompt and reads
    its last stdout line; a peer that fails is an error carrying its stderr."""
    fake = tmp_path / "python"
    fake.write_text(
        f"#!{sys.executable}\nimport json, sys\nargs = sys.argv[1:]\n"
        "print(json.dumps({'llama_cpp': 'fake', 'args': args, 'decode_tokens_per_s': 50.0}))\n"
    )
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setattr("bench.cluster_proc.default_gguf_path", lambda: "/models/m.gguf")
    got = engine_peer.llama_cpp_decode(str(fake), 1000)
    script, *args = got["args"]
    assert script == str(engine_peer.LLAMA_SCRIPT)
    assert args[:2] == ["--gguf", "/models/m.gguf"]
    assert (
        json.loads(args[args.index("--prompt") + 1])
        == decode_prompts(1000, 1, engine_peer.DECODE_PROMPT_LEN)[0]
    )
    row = engine_peer._versus_llama({"tandem": 75.0}, str(fake), 1000)
    assert row["tandem_over_llama_cpp"] == 1.5
    fake.write_text(f"#!{sys.executable}\nimport sys\nprint('no llama_cpp', file=sys.stderr)\nsys.exit(2)\n")
    with pytest.raises(RuntimeError, match="llama.cpp peer failed \\(2\\): no llama_cpp"):
        engine_peer.llama_cpp_decode(str(fake), 1000)
    monkeypatch.setattr(engine_peer, "LLAMA_PYTHON", tmp_path / "missing")
    assert engine_peer.resolve_python(None, engine_peer.LLAMA_PYTHON, "llama") is None
    with pytest.raises(ValueError, match="make peer-llama"):
        engine_peer.resolve_python(str(tmp_path / "missing"), engine_peer.LLAMA_PYTHON, "llama")
