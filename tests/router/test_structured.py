"""``response_format`` → llguidance grammar: each kind, judged by which documents the grammar accepts,
and a precise ``ValueError`` for each bad input."""

from __future__ import annotations

import json

import pytest
from llguidance import LLMatcher, LLTokenizer

from router.structured import grammar_for

PERSON = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer", "minimum": 0}},
    "required": ["name", "age"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def tokenizer(default_model) -> LLTokenizer:
    return LLTokenizer((default_model / "tokenizer.json").read_text())


def accepts(tokenizer: LLTokenizer, grammar: str, text: str) -> bool:
    """Whether ``text``, then the end of the sequence, is a complete match of ``grammar``."""
    matcher = LLMatcher(tokenizer, grammar, log_level=0)
    assert not matcher.is_error(), matcher.get_error()
    return matcher.consume_tokens(tokenizer.tokenize_str(text)) and matcher.is_accepting()


def schema_format(schema: dict, **extra) -> dict:
    return {"type": "json_schema", "json_schema": {"name": "person", "schema": schema, **extra}}


def test_text_is_unconstrained():
    assert grammar_for({"type": "text"}) is None


def test_json_object_accepts_objects_only(tokenizer):
    grammar = grammar_for({"type": "json_object"})
    assert isinstance(grammar, str)
    assert accepts(tokenizer, grammar, '{"x": [1, 2.5, "y"], "z": {"w": null}}')
    assert accepts(tokenizer, grammar, "{}")
    for text in ("[1, 2]", '"text"', "42", '{"x": 1', '{"x": 1} trailing'):
        assert not accepts(tokenizer, grammar, text), text


@pytest.mark.parametrize("strict", [True, False])
def test_json_schema_accepts_exactly_the_schema(tokenizer, strict):
    grammar = grammar_for(schema_format(PERSON, strict=strict))
    assert accepts(tokenizer, grammar, '{"name": "Ada", "age": 36}')
    assert not accepts(tokenizer, grammar, '{"name": "Ada"}')  # a required key is missing
    assert not accepts(tokenizer, grammar, '{"name": "Ada", "age": "36"}')  # wrong type
    assert not accepts(tokenizer, grammar, '{"name": "Ada", "age": -1}')  # below the minimum
    assert not accepts(tokenizer, grammar, '{"name": "Ada", "age": 36, "x": 1}')  # no other keys


def test_grammar_round_trips_as_a_json_string():
    grammar = grammar_for(schema_format(PERSON))
    assert json.loads(grammar)["grammars"][0]["json_schema"]["required"] == ["name", "age"]
    assert LLMatcher.validate_grammar(grammar) == ""


def test_whitespace_is_fixed(tokenizer):
    """Free whitespace would let a model pad with newlines until max_tokens."""
    grammar = grammar_for({"type": "json_object"})
    assert accepts(tokenizer, grammar, '{"a": 1, "b": 2}')
    assert not accepts(tokenizer, grammar, '{\n  "a": 1}')


def test_unimplemented_keyword_is_an_error_only_when_strict():
    schema = {"type": "array", "items": {"type": "integer"}, "uniqueItems": True}
    with pytest.raises(ValueError, match=r"json_schema\.schema .*uniqueItems"):
        grammar_for(schema_format(schema, strict=True))
    assert isinstance(grammar_for(schema_format(schema, strict=False)), str)


@pytest.mark.parametrize(
    ("response_format", "message"),
    [
        ("json", r"response_format must be an object, got str"),
        ({}, r"response_format.type must be one of text, json_object, json_schema; got None"),
        ({"type": "yaml"}, r"must be one of text, json_object, json_schema; got 'yaml'"),
        ({"type": "json_schema"}, r"response_format.json_schema must be an object .* got nothing"),
        ({"type": "json_schema", "json_schema": {"schema": PERSON}}, r"json_schema.name must be .* got None"),
        ({"type": "json_schema", "json_schema": {"name": "a b", "schema": PERSON}}, r"name must be"),
        (
            {"type": "json_schema", "json_schema": {"name": "p"}},
            r"response_format.json_schema.schema is required",
        ),
        (schema_format([PERSON]), r"json_schema.schema must be a JSON Schema object, got list"),
        (schema_format("object"), r"json_schema.schema must be a JSON Schema object, got str"),
        (schema_format(PERSON, strict="yes"), r"json_schema.strict must be a boolean, got 'yes'"),
        (schema_format({"type": "integr"}), r"json_schema.schema is not a valid .*: Invalid type: integr"),
        (schema_format({"type": "string", "pattern": "(["}), r"json_schema.schema is not a valid .*regex"),
        (schema_format({"$ref": "#/$defs/missing"}), r"json_schema.schema is not a valid .*missing"),
        (
            schema_format({"type": "object", "required": ["a"], "additionalProperties": False}),
            r"nsatisfiable",
        ),
        (schema_format({"minimum": float("nan")}), r"json_schema.schema is not a valid"),
    ],
)
def test_bad_response_format(response_format, message):
    with pytest.raises(ValueError, match=message):
        grammar_for(response_format)
