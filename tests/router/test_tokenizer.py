"""The router's torch-free tokenizer equals transformers' on the default model."""

from __future__ import annotations

import pytest

from router.detokenizer import TextStream
from router.tokenizer import TextTokenizer

PROMPTS = [
    "Hello, world!",
    "  leading spaces and trailing  ",
    "Ünïcödé, emoji 🤖🚀 and CJK 你好世界",
    "line one\nline two\n\n\ttabbed",
    "<|im_start|>user\nspecial tokens in text<|im_end|>",
    "x" * 500,
]
CHATS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Name three colors."},
        {"role": "assistant", "content": "Red, green, blue."},
        {"role": "user", "content": "Two more, with emoji 🎨"},
    ],
    [{"role": "user", "content": ""}],
    [{"role": "assistant", "content": "I start."}, {"role": "user", "content": "ok\n\nthen?"}],
]


@pytest.fixture(scope="module")
def tokenizers(default_model):
    transformers = pytest.importorskip("transformers")
    return TextTokenizer(default_model), transformers.AutoTokenizer.from_pretrained(str(default_model))


@pytest.mark.parametrize("prompt", PROMPTS)
def test_encode_matches_transformers(tokenizers, prompt):
    ours, hf = tokenizers
    assert ours.encode(prompt) == hf.encode(prompt)


@pytest.mark.parametrize("messages", CHATS)
def test_chat_template_matches_transformers(tokenizers, messages):
    ours, hf = tokenizers
    expected = hf.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    if not isinstance(expected, list):  # transformers >= 5 returns a BatchEncoding
        expected = list(expected["input_ids"])
    assert ours.apply_chat_template(messages) == expected
    assert ours.render_chat(messages) == hf.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=False
    )


@pytest.mark.parametrize("text", PROMPTS + ["a🤖b🚀c", "é" * 7])
def test_incremental_decode_equals_full_decode(tokenizers, text):
    ours, hf = tokenizers
    ids = hf.encode(text) + [hf.eos_token_id]
    for step in (1, 2, 5):  # tokens per event
        stream = TextStream(ours)
        pieces = [stream.push(ids[i : i + step]) for i in range(0, len(ids), step)]
        pieces.append(stream.finish())
        assert "".join(pieces) == hf.decode(ids, skip_special_tokens=True)
        assert all("\ufffd" not in p for p in pieces)


def test_template_errors_become_value_errors(tmp_path, default_model):
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (tmp_path / name).write_bytes((default_model / name).read_bytes())
    (tmp_path / "chat_template.jinja").write_text("{{ raise_exception('only user messages') }}")
    with pytest.raises(ValueError, match="only user messages"):
        TextTokenizer(tmp_path).apply_chat_template([{"role": "user", "content": "hi"}])


def test_missing_tokenizer_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="no tokenizer.json"):
        TextTokenizer(tmp_path)
