"""Weight-only quantization: each quantized linear against its dequantized weight, the quantization
against its rounding bounds, and whole engines against transformers running the same rounded
weights and bfloat16 activations (emulated here, independently, from the definition of each scheme)."""

from __future__ import annotations

import argparse
from unittest import mock

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from engine import LLM, SamplingParams
from engine.args import add_engine_args, engine_config
from engine.config import EngineConfig
from engine.quant import (
    CPU_COMPUTE_DTYPE,
    LM_HEAD_INT8_GROUP_SIZE,
    Int4Linear,
    Int8Linear,
    quantize_int4,
    quantize_int8,
    quantize_linear,
    quantize_model,
)
from kernels import cpu_ext
from kernels.decode_step import FusedDecoder
from tests.engine.conftest import TINY, build_tiny
from tests.engine.reference import mixed_prompts

BF16 = torch.bfloat16
# A tiny Llama whose every linear fits the int4 kernel (out_features % 16, in_features % 32), with the
# LM head tied to the embedding as in SmolLM2.
INT4_FRIENDLY = dict(
    cls="LlamaConfig", vocab_size=320, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
    num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=512,
    rope_theta=10000.0, tie_word_embeddings=True,
)  # fmt: skip
# Mean |change| of the prompt tokens' log-probs from quantizing the int4-friendly tiny random model
# (weights ~ N(0, 0.08), harder on 4 bits than a trained model's). Measured 0.008-0.011 (int8) and
# 0.09-0.16 (int4) over four prompts with float32 activations; the bounds leave about 3x room for
# those and for the bfloat16 activations (measured with them: 0.010-0.013 and 0.095-0.145).
MEAN_LOGPROB_DELTA = {"int8": 0.03, "int4": 0.4}
# Engine vs transformers emulating its quantized linears: the same rounded weights and bf16 inputs,
# but other summation orders, so a bf16 rounding may land one step apart. Measured max 0.006.
EMULATION_ATOL = 0.02


def _round_to(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return x.to(dtype).float()


def _fake_quantize(w: torch.Tensor, method: str, group: int | None, dtype: torch.dtype) -> torch.Tensor:
    """The weight each scheme stands for, from its definition: int8 ``code * scale`` with scale
    max|w| / 127 (per row, or per ``group`` inputs); int4 ``(code - 8) * scale + zero`` per ``group``
    inputs with scale (max - min) / 15, zero min + 8 * scale; scales (and zeros) held in ``dtype``."""
    n, k = w.shape
    g = w.view(n, -1, group or k)
    if method == "int8":
        scale = _round_to(g.abs().amax(-1, keepdim=True) / 127, dtype)
        return ((g / scale).round().clamp(-127, 127) * scale).view(n, k)
    lo, hi = g.amin(-1, keepdim=True), g.amax(-1, keepdim=True)
    scale = _round_to((hi - lo) / 15, dtype)
    zero = _round_to(lo + 8 * scale, dtype)
    codes = ((g - (zero - 8 * scale)) / scale).round().clamp(0, 15)
    return ((codes - 8) * scale + zero).view(n, k)


def _bf16_linear_reference(x: torch.Tensor, w: torch.Tensor, group: int | None = None) -> torch.Tensor:
    """What the packed CPU kernels compute: bfloat16 inputs, float32 sums, a bfloat16 result per
    kernel call (one per ``group`` inputs)."""
    k = w.shape[1]
    xb = _round_to(x, BF16)
    parts = [_round_to(F.linear(xb[..., i : i + (group or k)], w[:, i : i + (group or k)]), BF16)
             for i in range(0, k, group or k)]  # fmt: skip
    return sum(parts)


def _random_linear(g: torch.Generator, bias: bool) -> nn.Linear:
    n = 16 * int(torch.randint(1, 20, (1,), generator=g))
    k = 32 * int(torch.randint(1, 20, (1,), generator=g))
    return nn.Linear(k, n, bias=bias)


@pytest.mark.parametrize("method", ["int8", "int8-group", "int4"])
@pytest.mark.parametrize("packed", [True, False])
@pytest.mark.parametrize("bias", [False, True])
def test_quantized_linear_matches_its_dequantized_weight(method, packed, bias):
    g = torch.Generator().manual_seed(hash((method, packed, bias)) % 1000)
    dtype = CPU_COMPUTE_DTYPE if packed else torch.float32
    group = 32 if method == "int8-group" else None
    for _ in range(4):
        lin = _random_linear(g, bias)
        if method == "int4":
            weight, module_cls = quantize_int4(lin.weight, dtype=dtype), Int4Linear
        else:
            weight, module_cls = quantize_int8(lin.weight, group, dtype), Int8Linear
        module, w = module_cls(weight, lin.bias, packed), weight.dequantize().float()
        b = lin.bias.detach() if bias else 0
        for rows in (1, 3, 70):
            x = torch.randn(2, rows, lin.in_features, generator=g)
            if packed:  # bf16 inputs, float32 sums, a bf16 result per kernel call (per group)
                ref = _round_to(x, BF16) @ w.T + b
                calls = lin.in_features // group if group else 1
                atol = 2**-6 * calls**0.5 * ref.abs().mean().item()
                torch.testing.assert_close(module(x), ref, rtol=2**-6, atol=atol)
            else:
                torch.testing.assert_close(module(x), x @ w.T + b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("method", ["int8", "int8-group", "int4"])
def test_quantization_is_round_to_nearest_within_its_range(method):
    w = torch.randn(48, 256) * torch.rand(48, 1)  # rows of different magnitude
    if method == "int4":
        weight = quantize_int4(w, group_size=64)
        codes = weight.codes.view(48, 4, 64)
        assert codes.amin(-1).eq(0).all() and codes.amax(-1).eq(15).all()  # each group spans 0..15
        step = weight.scales_zeros[..., 0].t()[..., None]
    else:
        group = 64 if method == "int8-group" else None
        weight = quantize_int8(w, group)
        codes = weight.codes.view(48, -1, group or 256)
        assert codes.abs().amax(-1).eq(127).all()  # each group's max |w| maps to ±127
        step = (weight.scales[:, None] if group is None else weight.scales.t())[..., None]
    deq = weight.dequantize()
    assert ((deq - w).view(48, step.shape[1], -1).abs() <= step / 2 + 1e-6).all()  # step: [N, groups, 1]
    group = None if method == "int8" else 64
    expect = _fake_quantize(w, method.removesuffix("-group"), group, torch.float32)
    torch.testing.assert_close(deq, expect, rtol=0, atol=1e-6)


def test_shapes_the_kernels_cannot_take_fall_back():
    assert isinstance(quantize_linear(nn.Linear(64, 48), "int4"), Int4Linear)
    assert isinstance(quantize_linear(nn.Linear(80, 48), "int4"), Int8Linear)  # in_features % 32
    assert isinstance(quantize_linear(nn.Linear(64, 40), "int4"), Int8Linear)  # out_features % 16
    assert quantize_linear(nn.Linear(80, 48), "int8").packed
    unpacked = quantize_linear(nn.Linear(72, 48), "int8")  # in_features % 16: dequantize and multiply
    assert not unpacked.packed and unpacked.scales.dtype == torch.float32
    x = torch.randn(3, 72)
    ref = x @ unpacked.dequantize().T + unpacked.bias
    torch.testing.assert_close(unpacked(x), ref, rtol=1e-5, atol=1e-5)


def test_tied_lm_head_gets_grouped_int8_and_the_embedding_stays():
    model = nn.ModuleDict({"embed": nn.Embedding(320, 64), "lm_head": nn.Linear(64, 320, bias=False)})
    model["lm_head"].weight = model["embed"].weight
    before = model["embed"].weight.detach().clone()
    quantize_model(model, "int4")
    assert isinstance(model["lm_head"], Int8Linear) and model["lm_head"].group_size == LM_HEAD_INT8_GROUP_SIZE
    assert torch.equal(model["embed"].weight, before)


class _EmulatedLinear(nn.Module):
    """A transformers linear as the engine runs it quantized on CPU: the rounded weight, and bf16
    inputs and scales where the packed kernels take the shape (else float32 throughout)."""

    def __init__(self, linear: nn.Linear, method: str, group: int | None) -> None:
        super().__init__()
        n, k = linear.weight.shape
        if method == "int4" and (n % 16 or k % 32):
            method, group = "int8", None  # the int4 kernel's shape limits
        self.group = None if method == "int4" else group
        self.bf16 = k % 16 == 0  # the int8 kernel's (int4 needs k % 32 anyway)
        dtype = BF16 if self.bf16 else torch.float32
        self.weight = _fake_quantize(linear.weight.detach(), method, group, dtype)
        self.bias = None if linear.bias is None else linear.bias.detach()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = _bf16_linear_reference(x, self.weight, self.group) if self.bf16 else F.linear(x, self.weight)
        return out if self.bias is None else out + self.bias


def _hf_emulating(model_dir, method: str):
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    head = model.get_output_embeddings()
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if child is head:  # int8 under both methods, in groups when they divide the inputs
                group = LM_HEAD_INT8_GROUP_SIZE if child.in_features % LM_HEAD_INT8_GROUP_SIZE == 0 else None
                setattr(module, name, _EmulatedLinear(child, "int8", group))
            elif isinstance(child, nn.Linear):
                setattr(module, name, _EmulatedLinear(child, method, 32 if method == "int4" else None))
    return model


@pytest.fixture(scope="module")
def int4_model(tmp_path_factory):
    with mock.patch.dict(TINY, {"int4_friendly": INT4_FRIENDLY}):
        return build_tiny("int4_friendly", tmp_path_factory.mktemp("int4_friendly"))


def _engine_matches_emulation(model_dir, method: str) -> None:
    """Prompt log-probs, prefilled in chunks, equal transformers emulating the quantization."""
    llm = LLM(str(model_dir), page_size=8, num_pages=256, max_num_batched_tokens=16, quantization=method)
    hf = _hf_emulating(model_dir, method)
    for prompt in mixed_prompts(llm.engine.model_cfg.vocab_size, seed=3)[4:7]:
        with torch.no_grad():
            ref = torch.log_softmax(hf(torch.tensor([prompt])).logits[0].float(), dim=-1)
        ref = ref[torch.arange(len(prompt) - 1), prompt[1:]]
        torch.testing.assert_close(_prompt_logprobs(llm, prompt), ref, rtol=0, atol=EMULATION_ATOL)


@pytest.mark.parametrize("method", ["int8", "int4"])
def test_int4_friendly_engine_matches_transformers_emulating_it(int4_model, method):
    _engine_matches_emulation(int4_model, method)
    model = LLM(str(int4_model), num_pages=64, quantization=method).engine.runner.model
    assert isinstance(model.lm_head, Int8Linear)
    assert isinstance(model.layers[0].qkv_proj, Int8Linear if method == "int8" else Int4Linear)


def test_tiny_models_int8_match_transformers_emulating_it(tiny_model):
    _engine_matches_emulation(tiny_model, "int8")


@pytest.mark.parametrize("method", ["int8", "int4"])
def test_quantized_greedy_is_the_same_with_prefix_hits_and_chunked_prefill(int4_model, method):
    # The packed kernels compute each row alone, so batching, chunking and cache hits change nothing.
    prompts = mixed_prompts(320, seed=4)
    params = SamplingParams(temperature=0.0, max_tokens=16, ignore_eos=True)
    cached = LLM(str(int4_model), page_size=8, num_pages=256, max_num_batched_tokens=48, quantization=method)
    plain = LLM(str(int4_model), page_size=8, num_pages=256, enable_prefix_caching=False, quantization=method)
    a, b = cached.generate(prompts, params), plain.generate(prompts, params)
    assert [o.token_ids for o in a] == [o.token_ids for o in b]
    assert all(o.num_cached_tokens > 0 for o in a[7:])


def _prompt_logprobs(llm: LLM, prompt: list[int]) -> torch.Tensor:
    params = SamplingParams(temperature=0.0, max_tokens=1, prompt_logprobs=0)
    out = llm.generate([prompt], params)[0]
    return torch.tensor([lp.logprob for lp in out.prompt_logprobs[1:]])


def test_quantized_logprobs_stay_close_to_fp32(int4_model):
    prompt = mixed_prompts(320, seed=5)[4]
    fp32 = _prompt_logprobs(LLM(str(int4_model), num_pages=64), prompt)
    delta = {}
    for method in ("int8", "int4"):
        quant = _prompt_logprobs(LLM(str(int4_model), num_pages=64, quantization=method), prompt)
        delta[method] = (quant - fp32).abs().mean().item()
        assert delta[method] < MEAN_LOGPROB_DELTA[method], method
    assert 0 < delta["int8"] < delta["int4"]  # 8 bits round more finely than 4


def test_quantization_must_be_a_known_scheme():
    with pytest.raises(ValueError, match="quantization must be one of"):
        EngineConfig(model="unused", quantization="fp8")
    with pytest.raises(ValueError, match="quantization must be one of"):
        quantize_linear(nn.Linear(64, 64), "int3")
    with pytest.raises(ValueError, match="in_features 72 is not a multiple of the group size 32"):
        quantize_int4(torch.randn(16, 72))


def test_quantization_flag_reaches_the_engine_config():
    parser = argparse.ArgumentParser()
    add_engine_args(parser)
    args = parser.parse_args(["--quantization", "int4"])
    assert engine_config(args, "unused", "cpu").quantization == "int4"
    assert engine_config(parser.parse_args([]), "unused", "cpu").quantization is None
    with pytest.raises(SystemExit):
        parser.parse_args(["--quantization", "int2"])


# The int4-friendly shapes as Qwen2 (a bias on q/k/v) and as Mistral with a sliding window shorter
# than the sequences: the compiled decode step takes both.
FUSED_VARIANTS = {  # Llama wider: rows of 8 and 18 groups (blocks of 8 and a pair in the int4 kernel)
    "llama": {**INT4_FRIENDLY, "hidden_size": 256, "intermediate_size": 576, "head_dim": 64},
    "qwen2": {**INT4_FRIENDLY, "cls": "Qwen2Config"},
    "mistral": {**INT4_FRIENDLY, "cls": "MistralConfig", "sliding_window": 12, "tie_word_embeddings": False},
}


@pytest.fixture(scope="module", params=sorted(FUSED_VARIANTS))
def fused_variant(request, tmp_path_factory):
    import transformers

    name = f"int4_friendly_{request.param}"
    with mock.patch.dict(TINY, {name: FUSED_VARIANTS[request.param]}):
        path = build_tiny(name, tmp_path_factory.mktemp(name))
    model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    with torch.no_grad():  # transformers starts biases at zero: give Qwen2's q/k/v biases values
        for param_name, p in model.named_parameters():
            if param_name.endswith(".bias"):
                p.normal_(0.0, 0.5, generator=torch.Generator().manual_seed(len(param_name)))
    model.save_pretrained(path)
    return path


NO_GEMV = pytest.mark.skipif(not cpu_ext.gemv_available(), reason="no AVX2 build of the small-batch kernels")


@NO_GEMV
@pytest.mark.parametrize("method", ["int8", "int4"])
def test_one_call_decode_step_equals_the_layer_by_layer_path(fused_variant, method):
    """Small-batch decode of a quantized model (up to 8 tokens) runs every layer in one compiled call (kernels/cpu/decode_step.c) on the kernels the layer path runs one
    by one: the same bits."""
    prompts = mixed_prompts(320, seed=6)[:3]
    params = SamplingParams(temperature=0.0, max_tokens=20, ignore_eos=True, logprobs=3)

    def one_at_a_time(llm):  # and the three together: decode steps of 3 tokens
        return [llm.generate([p], params)[0] for p in prompts] + llm.generate(prompts, params)

    fused = LLM(str(fused_variant), page_size=4, num_pages=128, quantization=method)
    calls = []
    with mock.patch.object(FusedDecoder, "__call__", autospec=True, side_effect=_counting(calls)):
        got = one_at_a_time(fused)
    assert 1 in calls and 3 in calls  # the compiled step ran, alone and batched
    with mock.patch("engine.runner.build_decode_step", return_value=None):
        layered = LLM(str(fused_variant), page_size=4, num_pages=128, quantization=method)
        expect = one_at_a_time(layered)
    for a, b in zip(got, expect):
        assert a.token_ids == b.token_ids
        assert [lp.logprob for lp in a.logprobs] == [lp.logprob for lp in b.logprobs]
        assert [lp.top for lp in a.logprobs] == [lp.top for lp in b.logprobs]


def test_float32_and_unpacked_models_keep_the_layer_path(int4_model):
    # fp32 linears have no one-row kernel (yet): the plan declines and the layer path serves
    llm = LLM(str(int4_model), num_pages=64)
    llm.generate([[5, 6, 7]], SamplingParams(temperature=0.0, max_tokens=3))
    assert llm.engine.runner.decode_step is None


def _counting(calls):
    """A side effect that records each call's row count and runs the real FusedDecoder.__call__."""
    real = FusedDecoder.__call__

    def call(self, embedding, *args):
        calls.append(embedding.shape[0])
        return real(self, embedding, *args)

    return call


@NO_GEMV
def test_one_call_decode_step_refuses_a_slot_past_the_cache(int4_model):
    llm = LLM(str(int4_model), page_size=4, num_pages=16, quantization="int4")
    runner = llm.engine.runner
    fused = runner.decode_step
    before = runner.kv_cache.clone()
    embedding = runner.model.embed_tokens(torch.tensor([5]))
    args = (
        torch.tensor([3]),
        torch.tensor([16 * 4]),
        torch.zeros(1, 1, dtype=torch.int32),
        torch.tensor([4]),
    )
    with pytest.raises(IndexError, match="slot 64 of token 0 is past the cache's 64 slots"):
        fused(embedding, *args)
    assert torch.equal(runner.kv_cache, before)  # nothing written
    with pytest.raises(ValueError, match="positions must have one entry per token"):
        fused(torch.cat([embedding, embedding]), *args)  # two embeddings, one of everything else


@NO_GEMV
def test_one_call_decode_step_leaves_larger_batches_to_the_layer_path(int4_model):
    llm = LLM(str(int4_model), page_size=4, num_pages=256, quantization="int4")
    params = SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True)
    calls = []
    with mock.patch.object(FusedDecoder, "__call__", autospec=True, side_effect=_counting(calls)):
        llm.generate(mixed_prompts(320, seed=7)[:9], params)  # decode steps of 9 tokens
        assert calls == []
        llm.generate(mixed_prompts(320, seed=7)[:8], params)  # of 8
        assert calls and set(calls) == {8}


@NO_GEMV
@pytest.mark.parametrize("method", ["int8", "int4"])
def test_one_call_decode_step_gives_each_token_what_it_gets_alone(int4_model, method):
    """A token's hidden state and KV do not depend on the tokens decoded beside it (up to 8), and a
    slot past the cache names the token it belongs to (the ones before it were written)."""
    llm = LLM(str(int4_model), page_size=4, num_pages=16, quantization=method)
    runner = llm.engine.runner
    step, cache = runner.decode_step, runner.kv_cache
    cache.normal_(generator=torch.Generator().manual_seed(1))  # context already in every page
    start = cache.clone()
    ids, positions = torch.tensor([5, 17, 42]), torch.tensor([9, 3, 14])
    tables = torch.arange(12, dtype=torch.int32).view(3, 4)
    slots = tables[torch.arange(3), positions // 4].long() * 4 + positions % 4
    lens = (positions + 1).to(torch.int32)
    embedding = runner.model.embed_tokens(ids)
    together = step(embedding, positions, slots, tables, lens)
    written = cache.clone()
    for i in range(3):
        cache.copy_(start)
        alone = step(
            embedding[i : i + 1], positions[i : i + 1], slots[i : i + 1], tables[i : i + 1], lens[i : i + 1]
        )
        assert torch.equal(alone[0], together[i])
        pages = tables[i].long()
        assert torch.equal(cache[:, :, :, pages], written[:, :, :, pages])
    cache.copy_(start)
    bad = slots.clone()
    bad[1] = 16 * 4
    with pytest.raises(IndexError, match="slot 64 of token 1 is past the cache's 64 slots"):
        step(embedding, positions, bad, tables, lens)
    assert not torch.equal(cache, start)  # token 0's K and V went in, as the layer path's write does
