"""Bad input raises ValueError naming the problem, before anything runs."""

from __future__ import annotations

import json

import pytest

from engine import LLM, SamplingParams
from engine.config import ModelConfig


@pytest.fixture(scope="module")
def llm(tiny_model) -> LLM:
    return LLM(str(tiny_model), page_size=8, num_pages=128)


def test_empty_prompt(llm):
    with pytest.raises(ValueError, match="empty"):
        llm.generate([[]], SamplingParams(max_tokens=4))


def test_prompt_plus_max_tokens_beyond_context(llm):
    with pytest.raises(ValueError, match="exceeds the model's context of 512"):
        llm.generate([[5] * 500], SamplingParams(max_tokens=20))


def test_request_larger_than_the_kv_cache(tiny_model):
    small = LLM(str(tiny_model), page_size=8, num_pages=4)
    with pytest.raises(ValueError, match="exceeds the KV cache"):
        small.generate([[5] * 30], SamplingParams(max_tokens=8))


@pytest.mark.parametrize("bad", [-1, 10**6])
def test_token_ids_outside_vocabulary(llm, bad):
    with pytest.raises(ValueError, match=f"token id {bad} is outside the vocabulary"):
        llm.generate([[3, bad, 4]], SamplingParams(max_tokens=4))


def test_nothing_runs_when_one_prompt_is_bad(llm):
    with pytest.raises(ValueError):
        llm.generate([[3, 4, 5], []], SamplingParams(max_tokens=4))
    assert not llm.engine.has_unfinished()


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"temperature": -0.5}, "temperature"),
        ({"temperature": float("nan")}, "temperature"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": 2.5}, "max_tokens"),
        ({"top_k": 1.5}, "top_k"),
        ({"logprobs": -1}, "logprobs"),
        ({"seed": "x"}, "seed"),
    ],
)
def test_invalid_sampling_values(kwargs, field):
    with pytest.raises(ValueError, match=field):
        SamplingParams(**kwargs)


def test_unknown_architecture(tmp_path, tiny_model):
    raw = json.loads((tiny_model / "config.json").read_text())
    raw["architectures"] = ["GPTNeoXForCausalLM"]
    (tmp_path / "config.json").write_text(json.dumps(raw))
    for f in tiny_model.glob("*.safetensors"):
        (tmp_path / f.name).symlink_to(f)
    with pytest.raises(ValueError, match="unknown architecture 'GPTNeoXForCausalLM'"):
        LLM(str(tmp_path), num_pages=16)


def test_not_a_model_directory(tmp_path):
    with pytest.raises(ValueError, match="no config.json"):
        ModelConfig.from_dir(tmp_path)
