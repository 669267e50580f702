"""``/tokenize`` and ``/detokenize``: the router's tokenizer over HTTP (vLLM's request and response
bodies), so clients count tokens exactly as the server will."""

from __future__ import annotations

from typing import Any

from router.errors import ApiError
from router.protocol import ROLES
from router.tokenizer import TextTokenizer
from router.validation import bad, get_bool, get_str, get_token_ids

_FIELDS = {"model", "prompt", "messages", "add_special_tokens", "add_generation_prompt"}


def _check_model(body: dict, served_model: str) -> None:
    model = get_str(body, "model", served_model)
    if model != served_model:
        raise ApiError(
            404, f"the model '{model}' does not exist; this server serves '{served_model}'",
            param="model", code="model_not_found",
        )  # fmt: skip


def tokenize(body: dict, tokenizer: TextTokenizer, served_model: str) -> list[int]:
    """Token ids of ``prompt`` (with the tokenizer's special tokens unless ``add_special_tokens``
    is false) or of ``messages`` rendered by the chat template, as a chat request would be."""
    unknown = sorted(set(body) - _FIELDS)
    if unknown:
        raise bad(unknown[0], f"unrecognized request argument supplied: {unknown[0]}")
    _check_model(body, served_model)
    if ("prompt" in body) == ("messages" in body):
        raise bad(None, "send exactly one of 'prompt' and 'messages'")
    try:
        if "prompt" in body:
            prompt = get_str(body, "prompt")
            special = get_bool(body, "add_special_tokens", True)
            return tokenizer.encode(prompt) if special else tokenizer.encode_plain(prompt)
        messages = body["messages"]
        if not isinstance(messages, list) or not all(
            isinstance(m, dict) and m.get("role") in ROLES and isinstance(m.get("content"), str)
            for m in messages
        ):
            raise bad("messages", "'messages' must be an array of {'role', 'content': string} objects")
        return tokenizer.apply_chat_template(messages)
    except ValueError as e:
        raise bad(None, str(e)) from e


def detokenize(body: dict[str, Any], tokenizer: TextTokenizer, served_model: str) -> str:
    """The text of ``tokens`` (special tokens left out, as generated text is)."""
    unknown = sorted(set(body) - {"model", "tokens"})
    if unknown:
        raise bad(unknown[0], f"unrecognized request argument supplied: {unknown[0]}")
    _check_model(body, served_model)
    if "tokens" not in body:
        raise bad("tokens", "'tokens' is a required field")
    return tokenizer.decode(get_token_ids(body["tokens"], "tokens", tokenizer.vocab_size))
