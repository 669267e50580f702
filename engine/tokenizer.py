"""Tokenizer and chat template, from the model directory through transformers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "vocab.json")


def has_tokenizer(model_dir: str | Path) -> bool:
    return any((Path(model_dir) / name).is_file() for name in _TOKENIZER_FILES)


class Tokenizer:
    """Encode prompts, apply the chat template, decode outputs."""

    def __init__(self, model_dir: str | Path) -> None:
        from transformers import AutoTokenizer

        self.hf = AutoTokenizer.from_pretrained(str(model_dir))

    def encode(self, text: str) -> list[int]:
        return self.hf.encode(text)

    def decode(self, token_ids: list[int]) -> str:
        return self.hf.decode(token_ids, skip_special_tokens=True)

    def apply_chat_template(self, messages: list[dict[str, Any]]) -> list[int]:
        if not self.hf.chat_template:
            raise ValueError("this model has no chat template; send a plain prompt instead")
        ids = self.hf.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        if isinstance(ids, dict) or hasattr(ids, "input_ids"):  # transformers>=5 returns a BatchEncoding
            ids = ids["input_ids"]
        return list(ids)
