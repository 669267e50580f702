"""The engine hooks disaggregation stands on: prefill in one engine, decode in another, prefixes
imported from packed pages. The split must not change a single token."""

from __future__ import annotations

import pytest
import torch

from engine import LLM, SamplingParams
from tests.engine.reference import mixed_prompts
from tests.engine.split import drain, prefilled


def split_generate(prefill: LLM, decode: LLM, prompt: list[int], params: SamplingParams) -> list[int]:
    seq = prefilled(prefill, prompt, params, "p")
    assert seq.finish_reason == "prefilled"
    kv = prefill.engine.export_kv(seq)
    prefill.engine.release(seq)
    first = seq.output_token_ids[0]
    out = decode.engine.add_prefilled(prompt, first, params, kv, request_id="d")
    drain(decode)
    return out.output_token_ids


def test_prefill_here_decode_there_equals_one_engine(tiny_model):
    prefill = LLM(str(tiny_model), page_size=8, num_pages=64)
    decode = LLM(str(tiny_model), page_size=8, num_pages=64)
    for params in (
        SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True),
        SamplingParams(temperature=0.9, top_p=0.9, max_tokens=12, seed=11, ignore_eos=True),
    ):
        for prompt in mixed_prompts(250, seed=12)[:4]:
            whole = prefill.generate([prompt], params)[0].token_ids
            assert split_generate(prefill, decode, prompt, params) == whole
    assert prefill.engine.pool.num_used_pages == 0 and decode.engine.pool.num_used_pages == 0


def test_imported_prefix_is_a_local_hit_with_identical_output(tiny_model):
    source = LLM(str(tiny_model), page_size=8, num_pages=64)
    target = LLM(str(tiny_model), page_size=8, num_pages=64)
    prompt = mixed_prompts(250, seed=13)[4]  # 70 tokens
    params = SamplingParams(temperature=0.0, max_tokens=10, ignore_eos=True)
    seq = prefilled(source, prompt, params)
    chunks = [source.engine.pack_pages(seq, first, 4) for first in (0, 4)]  # two 32-token chunks
    source.engine.release(seq)
    assert target.engine.import_prefix(prompt, chunks) == 64
    assert target.engine.import_prefix(prompt, chunks) == 64  # idempotent: already cached
    out = target.generate([prompt], params)[0]
    assert out.num_cached_tokens == 64
    assert out.token_ids == source.generate([prompt], params)[0].token_ids


def test_import_stops_when_pages_run_out(tiny_model):
    source = LLM(str(tiny_model), page_size=8, num_pages=64)
    target = LLM(str(tiny_model), page_size=8, num_pages=5)
    prompt = mixed_prompts(250, seed=14)[4]
    seq = prefilled(source, prompt, SamplingParams(max_tokens=1))
    chunks = [source.engine.pack_pages(seq, first, 4) for first in (0, 4)]
    source.engine.release(seq)
    assert target.engine.import_prefix(prompt, chunks) == 32


def test_kv_of_another_layout_is_refused_before_a_page_is_touched(tiny_model):
    import pytest
    import torch

    source = LLM(str(tiny_model), page_size=8, num_pages=64)
    target = LLM(str(tiny_model), page_size=8, num_pages=64)
    prompt = mixed_prompts(250, seed=15)[4]  # 70 tokens
    params = SamplingParams(temperature=0.0, max_tokens=4, ignore_eos=True)
    seq = prefilled(source, prompt, params)
    good = source.engine.pack_pages(seq, 0, 4)
    kv = source.engine.export_kv(seq)
    source.engine.release(seq)
    free = target.engine.pool.num_free_pages
    for bad in (torch.zeros(4), good.half(), good[:, :1], good[..., :-1]):
        with pytest.raises(ValueError, match="this engine's pages need"):
            target.engine.import_prefix(prompt, [good, bad])  # the good first chunk is not imported either
        with pytest.raises(ValueError, match="this engine's pages need"):
            target.engine.add_prefilled(prompt, 5, params, bad, request_id="d")
    with pytest.raises(ValueError, match="more than it has"):
        target.engine.import_prefix(prompt[:20], [good])  # 32 tokens of KV for a 20-token prompt
    with pytest.raises(ValueError, match="pages need float32"):
        target.engine.add_prefilled(prompt, 5, params, kv[:, :, :, :-1], request_id="d")
    assert target.engine.pool.num_free_pages == free and not target.engine.has_unfinished()
    assert target.engine.import_prefix(prompt, [good]) == 32


def test_a_first_token_outside_the_vocabulary_is_refused(tiny_model):
    import pytest

    source = LLM(str(tiny_model), page_size=8, num_pages=64)
    target = LLM(str(tiny_model), page_size=8, num_pages=64)
    prompt = mixed_prompts(250, seed=16)[0]
    params = SamplingParams(temperature=0.0, max_tokens=4, ignore_eos=True)
    seq = prefilled(source, prompt, params)
    kv = source.engine.export_kv(seq)
    source.engine.release(seq)
    for bad in (-1, source.engine.model_cfg.vocab_size, 10**12):
        with pytest.raises(ValueError, match="first token id"):
            target.engine.add_prefilled(prompt, bad, params, kv, request_id="d")
    assert not target.engine.has_unfinished()


def test_layers_sent_as_they_are_computed_are_the_kv_handed_off_whole(tiny_model):
    """``step(on_layer)`` calls back after every layer of the step that completes a prefill-only
    prompt (and of no other step): each layer packed then is final, and together they are
    ``export_kv``'s KV, with which another engine decodes exactly what one engine would."""
    prefill = LLM(str(tiny_model), page_size=8, num_pages=64, max_num_batched_tokens=16)
    decode = LLM(str(tiny_model), page_size=8, num_pages=64)
    params = SamplingParams(temperature=0.0, max_tokens=10, ignore_eos=True)
    prompt = mixed_prompts(250, seed=13)[4]  # longer than one 16-token step: prefilled in chunks
    seq = prefill.engine.add_request(prompt, params, request_id="p", prefill_only=True)
    layers, calls = {}, []

    def on_layer(layer: int, seqs) -> None:
        calls.append((layer, [s.request_id for s in seqs]))
        layers[layer] = prefill.engine.pack_layers(seq, layer, 1)

    steps = 0
    while prefill.engine.has_unfinished():
        prefill.engine.step(on_layer)
        steps += 1
    num_layers = prefill.engine.model_cfg.num_layers
    assert steps > 1 and calls == [(i, ["p"]) for i in range(num_layers)]  # the last chunk's step only
    kv = prefill.engine.export_kv(seq)
    assert torch.equal(torch.cat([layers[i] for i in range(num_layers)]), kv)
    assert torch.equal(prefill.engine.pack_layers(seq, 1, num_layers - 1), kv[1:])
    groups = [layers[i] for i in range(num_layers)]  # as they arrive: no copy into one tensor
    with pytest.raises(ValueError, match=f"{num_layers - 1} layers of KV, this model has {num_layers}"):
        decode.engine.add_prefilled(prompt, seq.output_token_ids[0], params, groups[:-1], request_id="d")
    with pytest.raises(
        ValueError, match=rf"\(layers 1\.\.{num_layers}\).*pages need float32\[{num_layers - 1}, "
    ):
        decode.engine.add_prefilled(prompt, seq.output_token_ids[0], params, [groups[0], kv], request_id="d")
    out = decode.engine.add_prefilled(prompt, seq.output_token_ids[0], params, groups, request_id="d")
    drain(decode)
    assert out.output_token_ids == prefill.generate([prompt], params)[0].token_ids
    assert decode.engine.pool.num_used_pages == 0


def test_layers_written_into_reserved_pages_as_they_land_decode_exactly(tiny_model):
    """The receiving side of a layer-wise hand-off: pages reserved at the first group, each group
    written into its layers as it lands, the pages handed to the request; a refused group and
    pages no request took are given back."""
    from engine.types import KVPages

    prefill = LLM(str(tiny_model), page_size=8, num_pages=64)
    decode = LLM(str(tiny_model), page_size=8, num_pages=64)
    params = SamplingParams(temperature=0.0, max_tokens=10, ignore_eos=True)
    prompt = mixed_prompts(250, seed=14)[4]
    seq = prefilled(prefill, prompt, params, "p")
    num_layers, num_pages = prefill.engine.model_cfg.num_layers, len(seq.block_table)
    free = decode.engine.pool.num_free_pages
    pages = decode.engine.reserve_pages(num_pages)
    for layer in range(num_layers):
        assert decode.engine.write_layers(pages, prefill.engine.pack_layers(seq, layer, 1), layer) == 1
    with pytest.raises(ValueError, match="pages need"):  # another page count: nothing written
        decode.engine.write_layers(pages[:-1], prefill.engine.pack_layers(seq, 0, 1), 0)
    with pytest.raises(ValueError, match="needs"):
        decode.engine.add_prefilled(
            prompt, seq.output_token_ids[0], params, KVPages(pages[:-1]), request_id="x"
        )
    out = decode.engine.add_prefilled(prompt, seq.output_token_ids[0], params, KVPages(pages), request_id="d")
    drain(decode)
    assert out.output_token_ids == prefill.generate([prompt], params)[0].token_ids
    spare = decode.engine.reserve_pages(3)
    decode.engine.release_pages(spare)
    assert decode.engine.pool.num_free_pages == free and decode.engine.pool.num_used_pages == 0
