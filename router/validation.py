"""Typed reads of JSON request fields: each failure is a 400 ``ApiError`` naming the field.

The router validates what the engine's ``SamplingParams`` would (the engine imports torch, the
router may not), so a bad value is a 400 here rather than a worker failure later.
"""

from __future__ import annotations

import json
import math
from typing import Any

from router.errors import ApiError

_MISSING = object()


def bad(param: str | None, message: str, code: str | None = None) -> ApiError:
    return ApiError(400, message, param=param, code=code)


MAX_DEPTH = 32  # JSON nesting: an OpenAI request needs five or six levels
MAX_STOP_CHARS = 1024


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


def reject_unsupported(body: dict, *, chat: bool) -> None:
    """400 for features this server does not implement, when asked for with a non-default value."""
    if (n := get_int(body, "n", lo=1)) is not None and n > 1:
        raise bad("n", "n > 1 is not supported: send one request per sample")
    if (best_of := get_int(body, "best_of", lo=1)) is not None and best_of > 1:
        raise bad("best_of", "best_of > 1 is not supported")
    logprobs = body.get("logprobs")
    if logprobs is not None and logprobs is not False:  # completions' logprobs=0 asks for them too
        raise bad("logprobs", "logprobs are not supported yet")
    if body.get("top_logprobs") is not None:
        raise bad("top_logprobs", "logprobs are not supported yet")
    for name in ("presence_penalty", "frequency_penalty"):
        if get_number(body, name, 0.0, -2.0, 2.0) != 0.0:
            raise bad(name, f"{name} is not supported yet (leave it 0)")
    if body.get("logit_bias"):
        raise bad("logit_bias", "logit_bias is not supported")
    if chat:
        for name in ("tools", "functions"):
            if body.get(name):
                raise bad(name, "tool calling is not supported")
        if body.get("tool_choice") not in (None, "none"):
            raise bad("tool_choice", "tool calling is not supported")
        fmt = body.get("response_format")
        if fmt is not None and not (isinstance(fmt, dict) and fmt.get("type") == "text"):
            raise bad("response_format", "only the 'text' response_format is supported")
    else:
        if get_bool(body, "echo", False):
            raise bad("echo", "echo is not supported")
        if body.get("suffix") is not None:
            raise bad("suffix", "suffix is not supported")
