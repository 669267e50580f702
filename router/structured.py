"""OpenAI ``response_format`` → an llguidance grammar string, validated here so that the router
rejects (400) what a worker could not compile.

The grammar string is what travels to the workers: ``engine.grammar.GrammarCompiler.compile``
takes it as it is. It is llguidance's JSON grammar form (``{"grammars": [{"json_schema": ...}]}``),
a plain ``str`` that needs no tokenizer to build or to validate, so this module stays torch-free.

Generated JSON is compact-with-spaces (``{"a": 1, "b": [2, 3]}``): free whitespace between tokens
lets a small model emit newlines until ``max_tokens``, so the separators are fixed instead.
"""

from __future__ import annotations

import re
from typing import Any

from llguidance import LLMatcher

SUPPORTED_TYPES = ("text", "json_object", "json_schema")
_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
_JSON_STYLE = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


def grammar_for(response_format: dict) -> str | None:
    """The llguidance grammar for an OpenAI ``response_format`` object, or None for ``text``.

    ``json_object``: any JSON object. ``json_schema``: ``{"name": str, "schema": {...},
    "strict": bool, "description": str}``; ``name`` and ``schema`` are required. With ``strict``
    (default false, as in OpenAI's API) a schema keyword llguidance does not implement is an error;
    without it such keywords are ignored (best effort). Raises ``ValueError`` naming the bad field.
    """
    if not isinstance(response_format, dict):
        raise ValueError(f"response_format must be an object, got {type(response_format).__name__}")
    kind = response_format.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return _compile({"type": "object"}, strict=True, where="response_format")
    if kind == "json_schema":
        return _schema_grammar(response_format.get("json_schema"))
    raise ValueError(f"response_format.type must be one of {', '.join(SUPPORTED_TYPES)}; got {kind!r}")


def _schema_grammar(spec: Any) -> str:
    where = "response_format.json_schema"
    if not isinstance(spec, dict):
        raise ValueError(f"{where} must be an object with 'name' and 'schema', got {_kind(spec)}")
    name = spec.get("name")
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ValueError(f"{where}.name must be 1-64 characters of a-z, A-Z, 0-9, '_' or '-'; got {name!r}")
    if "schema" not in spec:
        raise ValueError(f"{where}.schema is required")
    schema = spec["schema"]
    if not isinstance(schema, dict):
        raise ValueError(f"{where}.schema must be a JSON Schema object, got {_kind(schema)}")
    strict = spec.get("strict", False)
    if strict is None:
        strict = False
    if not isinstance(strict, bool):
        raise ValueError(f"{where}.strict must be a boolean, got {strict!r}")
    return _compile(schema, strict=strict, where=f"{where}.schema")


def _compile(schema: dict, strict: bool, where: str) -> str:
    # ``defaults``: a schema's own "x-guidance" options may still override the style.
    options = {**_JSON_STYLE, "lenient": not strict}
    try:
        grammar = LLMatcher.grammar_from_json_schema(schema, defaults=options)
    except (ValueError, TypeError) as e:  # not serializable as JSON
        raise ValueError(f"{where} is not a valid JSON Schema: {e}") from None
    is_error, messages = LLMatcher.validate_grammar_with_warnings(grammar)
    if is_error:
        raise ValueError(f"{where} is not a valid or supported JSON Schema: {messages[0]}")
    return grammar


def _kind(value: Any) -> str:
    return "nothing" if value is None else type(value).__name__
