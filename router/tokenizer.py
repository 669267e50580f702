"""Text ⇄ token ids without torch: the model's ``tokenizer.json`` (``tokenizers``) and its chat
template (``jinja2``, in the sandboxed environment transformers renders templates in).

Contract: ``encode(text)`` equals ``transformers.AutoTokenizer.encode(text)`` and
``apply_chat_template(messages)`` equals ``AutoTokenizer.apply_chat_template(messages,
add_generation_prompt=True, tokenize=True)`` for the same model directory (tests check both).
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

import jinja2
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import Tokenizer

_SPECIAL_TOKEN_NAMES = ("bos_token", "eos_token", "unk_token", "pad_token")
FIM_TOKENS = ("<fim_prefix>", "<fim_suffix>", "<fim_middle>")


def _byte_to_unicode() -> dict[int, str]:
    """GPT-2's byte-level alphabet: each byte as the printable character its vocabularies spell it with."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


_UNICODE_TO_BYTE = {c: b for b, c in _byte_to_unicode().items()}


class _GenerationBlock(jinja2.ext.Extension):
    """``{% generation %}…{% endgeneration %}`` (transformers' assistant-mask marker) renders its body."""

    tags = {"generation"}

    def parse(self, parser: jinja2.parser.Parser) -> jinja2.nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.CallBlock(self.call_method("_render"), [], [], body).set_lineno(lineno)

    def _render(self, caller: Any) -> str:
        return caller()


def _raise_exception(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def _tojson(
    x: Any, ensure_ascii: bool = False, indent: int | None = None, separators=None, sort_keys=False
) -> str:
    # transformers overrides jinja's tojson, which would HTML-escape
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _compile(template: str) -> jinja2.Template:
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[_GenerationBlock, jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env.from_string(template)


def _token_text(value: Any) -> str | None:
    """A special token as tokenizer_config.json writes it: a string or an AddedToken dict."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


class TextTokenizer:
    """Encode prompts, render chats, decode outputs for one model directory.

    Raises ``ValueError`` at construction if the directory has no ``tokenizer.json``.
    """

    def __init__(self, model_dir: str | Path) -> None:
        model_dir = Path(model_dir)
        path = model_dir / "tokenizer.json"
        if not path.is_file():
            raise ValueError(f"{model_dir} has no tokenizer.json; pass --model with an HF model directory")
        self._tok = Tokenizer.from_file(str(path))
        config_path = model_dir / "tokenizer_config.json"
        config = json.loads(config_path.read_text()) if config_path.is_file() else {}
        self.special_tokens = {
            name: text for name in _SPECIAL_TOKEN_NAMES if (text := _token_text(config.get(name))) is not None
        }
        self.chat_template = self._find_template(model_dir, config)
        self._template = _compile(self.chat_template) if self.chat_template else None
        self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)
        decoder = json.loads(path.read_text()).get("decoder") or {}
        decoders = [decoder, *decoder.get("decoders", [])]
        self._byte_level = any(d.get("type") == "ByteLevel" for d in decoders)
        # no token covers more characters of text than its vocabulary entry has (byte-level and
        # SentencePiece vocabularies spell a token with at least one character per character it
        # decodes to): a text of N characters is at least N / max_token_chars tokens
        self.max_token_chars = max(map(len, self._tok.get_vocab(with_added_tokens=True)), default=1)

    @staticmethod
    def _find_template(model_dir: Path, config: dict) -> str | None:
        path = model_dir / "chat_template.jinja"
        if path.is_file():
            return path.read_text()
        template = config.get("chat_template")
        if isinstance(template, list):  # named templates: [{"name": "default", "template": ...}, ...]
            named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
            template = named.get("default")
        return template if isinstance(template, str) else None

    def encode(self, text: str) -> list[int]:
        """Token ids of a plain prompt, with the special tokens the tokenizer adds (e.g. BOS)."""
        return self._tok.encode(text, add_special_tokens=True).ids

    def encode_plain(self, text: str) -> list[int]:
        """Token ids of a text alone (no special tokens added)."""
        return self._tok.encode(text, add_special_tokens=False).ids

    def render_chat(self, messages: list[dict[str, Any]]) -> str:
        """The chat as the template writes it, ending with the assistant's generation prompt.

        Raises ``ValueError`` if the model has no template or the template rejects the chat.
        """
        if self._template is None:
            raise ValueError("this model has no chat template; use /v1/completions with a plain prompt")
        # like transformers: keys set to None are dropped (templates test presence, not value)
        messages = [{k: v for k, v in m.items() if v is not None} for m in messages]
        try:
            return self._template.render(
                messages=messages,
                tools=None,
                documents=None,
                add_generation_prompt=True,
                **self.special_tokens,
            )
        except jinja2.exceptions.TemplateError as e:
            raise ValueError(f"the chat template rejected these messages: {e}") from e

    def apply_chat_template(self, messages: list[dict[str, Any]]) -> list[int]:
        # the template writes the special tokens itself: none are added on top
        return self._tok.encode(self.render_chat(messages), add_special_tokens=False).ids

    def decode(self, token_ids: list[int]) -> str:
        return self._tok.decode(token_ids, skip_special_tokens=True)

    def fill_in_the_middle(self, prompt: str | list[int], suffix: str) -> list[int]:
        """The prompt of a fill-in-the-middle completion (prefix, suffix, middle: the order
        StarCoder-style models are trained on). ``ValueError`` if the vocabulary has no FIM tokens."""
        ids = [self._tok.token_to_id(t) for t in FIM_TOKENS]
        if None in ids:
            raise ValueError(
                "'suffix' needs a model trained for fill-in-the-middle; this model's vocabulary has no "
                f"{', '.join(FIM_TOKENS)} tokens"
            )
        prefix_ids = (
            self._tok.encode(prompt, add_special_tokens=False).ids if isinstance(prompt, str) else prompt
        )
        suffix_ids = self._tok.encode(suffix, add_special_tokens=False).ids
        return [ids[0], *prefix_ids, ids[1], *suffix_ids, ids[2]]

    def token_text(self, token_id: int) -> str:
        """One token's text as logprobs show it (special tokens included)."""
        return self._tok.decode([token_id], skip_special_tokens=False)

    def token_bytes(self, token_id: int) -> list[int]:
        """One token's bytes (a byte-level BPE token may hold part of a UTF-8 character)."""
        piece = self._tok.id_to_token(token_id)
        if self._byte_level and piece is not None and all(c in _UNICODE_TO_BYTE for c in piece):
            return [_UNICODE_TO_BYTE[c] for c in piece]
        return list(self.token_text(token_id).encode())
