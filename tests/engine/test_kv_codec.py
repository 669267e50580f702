"""int8 KV for the wire and the store (engine.kv_codec) and an engine's checks of what it receives."""

import pytest
import torch

from engine import LLM, SamplingParams
from engine.config import ModelConfig
from engine.kv_codec import bytes_per_token, decode, encode
from tests.engine.conftest import build_tiny
from tests.engine.split import drain, prefilled


def packed(seed: int = 0, shape=(3, 2, 2, 5, 8, 16)) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    kv = torch.randn(shape, generator=g) * torch.rand(shape[:-1] + (1,), generator=g) * 10
    kv[0, 1, 0, 2, 3] = 0  # a vector of zeros (a padding slot) survives exactly
    return kv


def test_each_value_is_within_half_its_vectors_step():
    kv = packed()
    enc = encode(kv, "int8")
    assert enc.dtype == torch.int8 and enc.shape == (*kv.shape[:-1], kv.shape[-1] + 4)
    step = kv.abs().amax(dim=-1, keepdim=True) / 127  # the quantization step of each head vector
    err = (decode(enc, torch.float32) - kv).abs()
    assert (err <= step / 2 * (1 + 1e-5) + 1e-7).all()
    assert (decode(enc, torch.float32)[0, 1, 0, 2, 3] == 0).all()
    # the largest value of every vector is exact up to float rounding (it defines the scale)
    top = kv.abs().argmax(dim=-1, keepdim=True)
    torch.testing.assert_close(decode(enc, torch.float32).gather(-1, top), kv.gather(-1, top))


def test_encoded_buffers_slice_like_the_full_precision_layout():
    """A group of layers, or pages from an offset, cut from the encoded buffer decodes to the same
    cut of the decoded whole: hand-offs and store imports slice before decoding."""
    kv = packed(1)
    enc = encode(kv, "int8")
    whole = decode(enc, torch.float32)
    torch.testing.assert_close(decode(enc[1:3], torch.float32), whole[1:3], rtol=0, atol=0)
    torch.testing.assert_close(decode(enc[:, :, :, 2:], torch.float32), whole[:, :, :, 2:], rtol=0, atol=0)
    assert encode(kv, "auto") is kv


def test_int8_moves_about_a_quarter_of_float32s_bytes(tmp_path):
    cfg = ModelConfig.from_dir(build_tiny("llama", tmp_path))
    fp32 = bytes_per_token(cfg, torch.float32, "auto")
    int8 = bytes_per_token(cfg, torch.float32, "int8")
    assert fp32 == cfg.num_layers * 2 * cfg.num_kv_heads * cfg.head_dim * 4
    assert int8 == cfg.num_layers * 2 * cfg.num_kv_heads * (cfg.head_dim + 4)
    assert bytes_per_token(cfg, torch.bfloat16, "auto") == fp32 // 2
    with pytest.raises(ValueError, match="kv_dtype"):
        bytes_per_token(cfg, torch.float32, "fp8")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_tiny("llama", tmp_path_factory.mktemp("codec"))


def test_an_int8_engine_takes_either_encoding_and_an_exact_one_refuses_int8(tiny):
    """A decode engine set to int8 takes int8 KV (and its float32 equal: the same tokens follow) and
    names a buffer of neither layout; one left at ``auto`` refuses int8 KV, so that nothing computed
    over dequantized KV enters its exact cache. Nothing is kept of a refused buffer."""
    params = SamplingParams(temperature=0.0, max_tokens=6, ignore_eos=True)
    prompt = list(range(3, 40))
    sender = LLM(str(tiny), page_size=8, num_pages=32, kv_dtype="int8")
    seq = prefilled(sender, prompt, params, "p")
    kv = sender.engine.export_kv(seq)
    assert kv.dtype == torch.int8
    receiver = LLM(str(tiny), page_size=8, num_pages=32, kv_dtype="int8")
    outs = [receiver.engine.add_prefilled(prompt, seq.token_ids[-1], params, k, f"d{i}")
            for i, k in enumerate([kv, decode(kv, torch.float32)])]  # fmt: skip
    drain(receiver)
    assert outs[0].token_ids == outs[1].token_ids
    with pytest.raises(ValueError, match=r"int8\[.*\]; this engine's pages need int8"):
        receiver.engine.add_prefilled(prompt, seq.token_ids[-1], params, kv[..., :-1].contiguous(), "bad")
    exact = LLM(str(tiny), page_size=8, num_pages=32)
    with pytest.raises(ValueError, match="int8-encoded KV; this engine serves exact float32 KV"):
        exact.engine.add_prefilled(prompt, seq.token_ids[-1], params, kv, "refused")
    for engine in (receiver.engine, exact.engine):
        assert engine.pool.num_free_pages == engine.pool.num_pages and not engine.has_unfinished()
