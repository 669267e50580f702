"""The ``tandem`` command as a user runs it."""

from __future__ import annotations

import subprocess
import sys

import pytest

from engine import LLM, SamplingParams


def tandem(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "cluster.cli", *args], capture_output=True, text=True, timeout=timeout
    )


def test_help_lists_the_commands():
    out = tandem("--help")
    assert out.returncode == 0
    for command in ("generate", "convert", "serve"):
        assert command in out.stdout


def test_generate_bad_model_is_a_clear_error(tmp_path):
    out = tandem("generate", "hi", "--model", str(tmp_path))
    assert out.returncode == 2
    assert "not an HF model directory" in out.stderr


@pytest.mark.slow
def test_generate_answers_with_the_default_model(default_model):
    out = tandem("generate", "What is the capital of France?", "--max-tokens", "12")
    assert out.returncode == 0, out.stderr
    # Same greedy answer as the offline API with the chat template applied.
    llm = LLM(str(default_model), num_pages=64)
    expect = llm.chat(
        [{"role": "user", "content": "What is the capital of France?"}],
        SamplingParams(temperature=0.0, max_tokens=12),
    )
    assert out.stdout.strip() == expect.text.strip()
    assert "Paris" in out.stdout


@pytest.mark.parametrize("chunk_tokens", [0, 24])
def test_a_chunk_size_the_workers_cannot_use_is_refused_before_anything_starts(tmp_path, chunk_tokens):
    from cluster.launcher import ClusterConfig

    with pytest.raises(ValueError, match="multiple of the workers' page size 16"):
        ClusterConfig(model_dir=tmp_path, chunk_tokens=chunk_tokens)
    assert ClusterConfig(model_dir=tmp_path, chunk_tokens=32).chunk_tokens == 32
