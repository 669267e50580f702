"""Typed reads of JSON request fields: each failure is a 400 ``ApiError`` naming the field.

The router validates what the engine's ``SamplingParams`` would (the engine imports torch, the
router may not), so a bad value is a 400 here rather than a worker failure later.
"""

from __future__ import annotations

import json
import math
from typing import Any

from router.errors import ApiError
from router.structured import grammar_for
from transfer.messages import TokenBias

_MISSING = object()


def bad(param: str | None, message: str, code: str | None = None) -> ApiError:
    return ApiError(400, message, param=param, code=code)


MAX_DEPTH = 32  # JSON nesting: an OpenAI request needs five or six levels
MAX_STOP_CHARS = 1024
MAX_LOGIT_BIAS = 300  # tokens per request, as OpenAI allows


def parse_body(raw: bytes) -> dict[str, Any]:
    """The request body as a JSON object whose strings are valid Unicode, nested at most
    ``MAX_DEPTH`` deep."""
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise bad(None, f"the request body is not valid JSON: {e}") from None
    except RecursionError:
        raise bad(None, f"the request body nests deeper than {MAX_DEPTH} levels") from None
    if not isinstance(body, dict):
        raise bad(None, f"the request body must be a JSON object, got {type(body).__name__}")
    _check_values(body)
    return body


def _check_values(body: dict) -> None:
    """400 for nesting deeper than ``MAX_DEPTH`` and for strings that are not valid Unicode (JSON's
    ``\\ud800`` escapes decode to lone surrogates, which no tokenizer or encoder accepts)."""
    stack: list[tuple[Any, int, str]] = [(body, 1, "")]
    while stack:
        value, depth, path = stack.pop()
        if depth > MAX_DEPTH:
            raise bad(None, f"the request body nests deeper than {MAX_DEPTH} levels")
        if isinstance(value, dict):
            items = value.items()
        elif isinstance(value, list):
            items = enumerate(value)
        else:
            if isinstance(value, str):
                _check_unicode(value, path)
            continue
        for key, item in items:
            if isinstance(key, str):
                _check_unicode(key, path)
            stack.append((item, depth + 1, f"{path}.{key}" if isinstance(key, str) else f"{path}[{key}]"))


def _check_unicode(text: str, path: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        param = path.lstrip(".") or None
        raise bad(param, f"'{param}' is not valid Unicode: a lone surrogate at character {e.start}") from None


def _kind(value: Any) -> str:
    return {
        bool: "boolean",
        int: "integer",
        float: "number",
        str: "string",
        list: "array",
        dict: "object",
    }.get(type(value), "null" if value is None else type(value).__name__)


def get_str(body: dict, name: str, default: Any = _MISSING) -> Any:
    value = body.get(name, _MISSING)
    if value is _MISSING or (value is None and default is not _MISSING):
        if default is _MISSING:
            raise bad(name, f"'{name}' is a required field")
        return default
    if not isinstance(value, str):
        raise bad(name, f"'{name}' must be a string, got {_kind(value)}")
    return value


def get_bool(body: dict, name: str, default: bool) -> bool:
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise bad(name, f"'{name}' must be a boolean, got {_kind(value)}")
    return value


def get_int(body: dict, name: str, lo: int | None = None, hi: int | None = None) -> int | None:
    """An optional integer in [lo, hi] (None when absent or null)."""
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool):
        raise bad(name, f"'{name}' must be an integer, got {_kind(value)}")
    if lo is not None and value < lo:
        raise bad(name, f"'{name}' must be >= {lo}, got {value}")
    if hi is not None and value > hi:
        raise bad(name, f"'{name}' must be <= {hi}, got {value}")
    return value


def get_number(
    body: dict, name: str, default: float, lo: float, hi: float, *, open_lo: bool = False
) -> float:
    """An optional finite number in [lo, hi] (or (lo, hi] with ``open_lo``)."""
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        raise bad(name, f"'{name}' must be a finite number, got {_kind(value)}")
    if value > hi or value < lo or (open_lo and value == lo):
        interval = f"{'(' if open_lo else '['}{lo:g}, {hi:g}]"
        raise bad(name, f"'{name}' must be in {interval}, got {value}")
    return float(value)


def get_token_ids(value: Any, name: str, vocab_size: int) -> list[int]:
    if not isinstance(value, list) or not all(isinstance(t, int) and not isinstance(t, bool) for t in value):
        raise bad(name, f"'{name}' must be an array of integer token ids")
    if any(not 0 <= t < vocab_size for t in value):
        raise bad(name, f"'{name}' holds token ids outside the vocabulary [0, {vocab_size})")
    return value


def get_stop(body: dict) -> tuple[str, ...]:
    value = body.get("stop")
    if value is None:
        return ()
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise bad("stop", f"'stop' must be a string or an array of strings, got {_kind(value)}")
    if len(stops) > 16 or any(not s or len(s) > MAX_STOP_CHARS for s in stops):
        raise bad("stop", f"'stop' takes at most 16 non-empty strings of at most {MAX_STOP_CHARS} characters")
    return tuple(stops)


def get_logit_bias(body: dict, vocab_size: int) -> tuple[TokenBias, ...]:
    """OpenAI's ``logit_bias``: a map of token ids (as strings) to biases in [-100, 100]."""
    value = body.get("logit_bias")
    if value is None:
        return ()
    if not isinstance(value, dict):
        raise bad("logit_bias", f"'logit_bias' must be an object of token id → bias, got {_kind(value)}")
    if len(value) > MAX_LOGIT_BIAS:
        raise bad("logit_bias", f"'logit_bias' takes at most {MAX_LOGIT_BIAS} tokens, got {len(value)}")
    out = []
    for key, bias in value.items():
        token = int(key) if key.isdigit() else -1
        if not 0 <= token < vocab_size:
            raise bad("logit_bias", f"'logit_bias' key {key!r} is not a token id in [0, {vocab_size})")
        get_number(value, key, 0.0, -100.0, 100.0)  # names the key when the bias is out of range
        out.append(TokenBias(token, float(bias)))
    return tuple(out)


def get_grammar(body: dict) -> str | None:
    """The grammar ``response_format`` asks the output to match (None for plain text)."""
    value = body.get("response_format")
    if value is None:
        return None
    if not isinstance(value, dict):
        raise bad("response_format", f"'response_format' must be an object, got {_kind(value)}")
    try:
        return grammar_for(value)
    except ValueError as e:
        raise bad("response_format", f"'response_format': {e}") from None


_COMMON = {
    "model", "max_tokens", "temperature", "top_p", "n", "stream", "stream_options", "logprobs",
    "stop", "presence_penalty", "frequency_penalty", "logit_bias", "user", "seed", "response_format",
    # vLLM's sampling extensions
    "top_k", "min_p", "repetition_penalty", "min_tokens", "ignore_eos", "stop_token_ids",
}  # fmt: skip
FIELDS = {
    "completions": _COMMON | {"prompt", "suffix", "echo", "best_of"},
    "chat": _COMMON | {
        "messages", "max_completion_tokens", "top_logprobs", "tools", "tool_choice",
        "parallel_tool_calls", "functions", "function_call", "metadata", "store", "service_tier",
        "modalities",
    },
}  # fmt: skip


def reject_unsupported(body: dict, *, chat: bool) -> None:
    """400 for a field this server does not know (as OpenAI answers one), and for features it does
    not implement asked for with a non-default value: nothing a client sends is ignored silently."""
    unknown = sorted(set(body) - FIELDS["chat" if chat else "completions"])
    if unknown:
        raise bad(unknown[0], f"unrecognized request argument supplied: {unknown[0]}")
    n = get_int(body, "n", lo=1) or 1
    if (best_of := get_int(body, "best_of", lo=1)) is not None and best_of != n:
        raise bad("best_of", "best_of other than n is not supported (choices are not ranked)")
    if not chat:
        return
    for name in ("tools", "functions"):
        if body.get(name):
            raise bad(name, "tool calling is not supported")
    for name in ("tool_choice", "function_call"):
        if body.get(name) not in (None, "none"):
            raise bad(name, "tool calling is not supported")
    if body.get("store"):
        raise bad("store", "this server does not store completions ('store' must be false)")
    if body.get("modalities") not in (None, ["text"]):
        raise bad("modalities", "only the 'text' modality is supported")
    if body.get("service_tier") not in (None, "auto", "default"):
        raise bad("service_tier", "'service_tier' must be 'auto' or 'default'")
