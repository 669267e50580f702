"""Checkpoint loading: sharded safetensors via the index, and every supported dtype."""

from __future__ import annotations

import pytest
import torch
import transformers

from engine import LLM, SamplingParams
from tests.engine.reference import hf_log_softmax, mixed_prompts


def test_sharded_checkpoint_loads_identically(tmp_path, tiny_model):
    model = transformers.AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    model.save_pretrained(tmp_path, max_shard_size="20KB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    assert len(list(tmp_path.glob("*.safetensors"))) > 2
    prompts = mixed_prompts(250, seed=9)[:3]
    params = SamplingParams(temperature=0.0, max_tokens=10, ignore_eos=True)
    sharded = LLM(str(tmp_path), num_pages=64).generate(prompts, params)
    single = LLM(str(tiny_model), num_pages=64).generate(prompts, params)
    assert [o.token_ids for o in sharded] == [o.token_ids for o in single]


def test_missing_shard_is_named(tmp_path, tiny_model):
    model = transformers.AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    model.save_pretrained(tmp_path, max_shard_size="20KB")
    victim = sorted(tmp_path.glob("*.safetensors"))[0]
    victim.unlink()
    with pytest.raises(ValueError, match=victim.name):
        LLM(str(tmp_path), num_pages=16)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_runs_in_that_dtype_and_stays_close(tiny_model, dtype):
    llm = LLM(str(tiny_model), dtype=dtype, num_pages=64)
    assert llm.engine.runner.kv_cache.dtype == getattr(torch, dtype)
    assert all(p.dtype == getattr(torch, dtype) for p in llm.engine.runner.model.parameters())
    prompt = mixed_prompts(250, seed=10)[1]
    out = llm.generate([prompt], SamplingParams(temperature=0.0, max_tokens=1, logprobs=1))[0]
    ref = hf_log_softmax(tiny_model, prompt)[-1]
    assert out.logprobs[0].logprob == pytest.approx(ref[out.token_ids[0]].item(), abs=0.15)
