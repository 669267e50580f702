"""``/tokenize`` and ``/detokenize``: the router's tokenizer over HTTP (vLLM's request and response
bodies), so clients count tokens exactly as the server will."""

from __future__ import annotations

from typing import Any

from router.protocol import check_model, parse_messages
from router.tokenizer import TextTokenizer
from router.validation import bad, get_bool, get_str, get_token_ids

_FIELDS = {"model", "prompt", "messages", "add_special_tokens", "add_generation_prompt"}


def tokenize(body: dict, tokenizer: TextTokenizer, served_model: str) -> list[int]:
    """Token ids of ``prompt`` (with the tokenizer's special tokens unless ``add_special_tokens``
    is false) or of ``messages`` (validated and) rendered by the chat template exactly as a chat
    request's are."""
    unknown = sorted(set(body) - _FIELDS)
    if unknown:
        raise bad(unknown[0], f"unrecognized request argument supplied: {unknown[0]}")
    check_model(get_str(body, "model", served_model), served_model)
    if ("prompt" in body) == ("messages" in body):
        raise bad(None, "send exactly one of 'prompt' and 'messages'")
    try:
        if "prompt" in body:
            prompt = get_str(body, "prompt")
            special = get_bool(body, "add_special_tokens", True)
            return tokenizer.encode(prompt) if special else tokenizer.encode_plain(prompt)
        if not get_bool(body, "add_generation_prompt", True):  # chats are rendered as requests are
            raise bad("add_generation_prompt", "only add_generation_prompt: true is supported")
        return tokenizer.apply_chat_template(parse_messages(body["messages"]))
    except ValueError as e:
        raise bad(None, str(e)) from e


def detokenize(body: dict[str, Any], tokenizer: TextTokenizer, served_model: str) -> str:
    """The text of ``tokens`` (special tokens left out, as generated text is)."""
    unknown = sorted(set(body) - {"model", "tokens"})
    if unknown:
        raise bad(unknown[0], f"unrecognized request argument supplied: {unknown[0]}")
    check_model(get_str(body, "model", served_model), served_model)
    if "tokens" not in body:
        raise bad("tokens", "'tokens' is a required field")
    return tokenizer.decode(get_token_ids(body["tokens"], "tokens", tokenizer.vocab_size))
