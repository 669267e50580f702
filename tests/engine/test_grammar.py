"""Grammar-constrained decoding on SmolLM2's real tokenizer: random logits, masked, always decode to
JSON that satisfies the schema; EOS comes exactly when the grammar is complete; forbidden tokens
raise; unconstrained rows and padded vocabularies are handled."""

from __future__ import annotations

import json

import pytest
import torch

from engine.config import ModelConfig
from engine.grammar import GrammarCompiler, TokenConstraint, apply_masks
from router.structured import grammar_for

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 12},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "tags": {"type": "array", "items": {"enum": ["red", "green", "blue"]}, "maxItems": 3},
        "active": {"type": "boolean"},
        "pet": {
            "type": "object",
            "properties": {
                "kind": {"enum": ["cat", "dog"]},
                "legs": {"type": "integer", "minimum": 0, "maximum": 4},
            },
            "required": ["kind", "legs"],
            "additionalProperties": False,
        },
    },
    "required": ["name", "age", "tags", "active", "pet"],
    "additionalProperties": False,
}
GRAMMAR = grammar_for({"type": "json_schema", "json_schema": {"name": "person", "schema": SCHEMA}})
DOC = '{"name": "Ada", "age": 36, "tags": ["red"], "active": true, "pet": {"kind": "cat", "legs": 4}}'


def conforms(doc: object) -> bool:
    """SCHEMA, checked by hand."""
    if not isinstance(doc, dict) or set(doc) != {"name", "age", "tags", "active", "pet"}:
        return False
    pet = doc["pet"]
    return (
        isinstance(doc["name"], str)
        and len(doc["name"]) <= 12
        and type(doc["age"]) is int
        and 0 <= doc["age"] <= 120
        and isinstance(doc["tags"], list)
        and len(doc["tags"]) <= 3
        and all(t in ("red", "green", "blue") for t in doc["tags"])
        and isinstance(doc["active"], bool)
        and isinstance(pet, dict)
        and set(pet) == {"kind", "legs"}
        and pet["kind"] in ("cat", "dog")
        and type(pet["legs"]) is int
        and 0 <= pet["legs"] <= 4
    )


@pytest.fixture(scope="module")
def model_cfg(default_model) -> ModelConfig:
    return ModelConfig.from_dir(default_model)


@pytest.fixture(scope="module")
def compiler(default_model, model_cfg) -> GrammarCompiler:
    return GrammarCompiler(default_model, model_cfg.vocab_size, model_cfg.eos_token_ids)


@pytest.fixture(scope="module")
def hf(default_model):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(default_model))


def generate(constraint: TokenConstraint, cfg: ModelConfig, seed: int, greedy: bool) -> list[int]:
    """Random logits, masked; argmax or a softmax draw; accept; until EOS (at most 300 tokens)."""
    gen = torch.Generator().manual_seed(seed)
    tokens: list[int] = []
    while len(tokens) < 300 and (not tokens or tokens[-1] not in cfg.eos_token_ids):
        logits = 4 * torch.randn(1, cfg.vocab_size, generator=gen)
        apply_masks(logits, [constraint])
        token = int(logits.argmax()) if greedy else int(logits.softmax(-1).multinomial(1, generator=gen))
        constraint.accept(token)
        tokens.append(token)
    return tokens


@pytest.mark.parametrize(("seed", "greedy"), [(0, True), (1, True), (2, False), (3, False), (4, False)])
def test_random_logits_decode_to_a_conforming_document(compiler, model_cfg, hf, seed, greedy):
    constraint = compiler.compile(GRAMMAR)
    tokens = generate(constraint, model_cfg, seed, greedy)
    assert tokens[-1] in model_cfg.eos_token_ids, "the grammar ended and EOS followed"
    text = hf.decode(tokens[:-1], clean_up_tokenization_spaces=False)
    assert conforms(json.loads(text)), text


def test_eos_allowed_exactly_when_the_document_is_complete(compiler, model_cfg, hf):
    constraint = compiler.compile(GRAMMAR)
    eos = set(model_cfg.eos_token_ids)
    for token in hf.encode(DOC, add_special_tokens=False):
        assert not constraint.is_finished
        assert not any(constraint.allowed()[t] for t in eos)
        constraint.accept(token)
    assert constraint.is_finished and constraint.is_accepting
    assert set(constraint.allowed().nonzero().flatten().tolist()) == eos
    constraint.accept(next(iter(eos)))


def test_every_model_eos_id_ends_the_grammar(default_model, model_cfg, hf):
    eos = (*model_cfg.eos_token_ids, 0)  # a model may stop on several ids
    constraint = GrammarCompiler(default_model, model_cfg.vocab_size, eos).compile(
        grammar_for({"type": "json_object"})
    )
    for token in hf.encode('{"a": 1}', add_special_tokens=False):
        constraint.accept(token)
    assert set(constraint.allowed().nonzero().flatten().tolist()) == set(eos)


def test_forbidden_token_raises_and_leaves_the_state(compiler, model_cfg, hf):
    constraint = compiler.compile(GRAMMAR)
    for token in (hf.encode("hello", add_special_tokens=False)[0], model_cfg.eos_token_ids[0], -1, 10**6):
        with pytest.raises(ValueError, match=f"token {token} is not allowed"):
            constraint.accept(token)
    for token in hf.encode(DOC, add_special_tokens=False):  # still at the start
        constraint.accept(token)
    assert constraint.is_finished


def test_replaying_tokens_rebuilds_the_state(compiler, hf):
    """How a decode worker resumes a sequence whose first tokens were sampled elsewhere."""
    tokens = hf.encode(DOC, add_special_tokens=False)
    for cut in (1, len(tokens) // 2):
        original = compiler.compile(GRAMMAR)
        for token in tokens[:cut]:
            original.accept(token)
        rebuilt = compiler.compile(GRAMMAR)
        for token in tokens[:cut]:
            rebuilt.accept(token)
        assert torch.equal(original.allowed(), rebuilt.allowed())


def test_apply_masks_leaves_unconstrained_rows_untouched(compiler, model_cfg, hf):
    first = compiler.compile(GRAMMAR)
    second = compiler.compile(GRAMMAR)
    for token in hf.encode('{"name": "', add_special_tokens=False):  # inside a string: many tokens allowed
        second.accept(token)
    logits = torch.randn(3, model_cfg.vocab_size, generator=torch.Generator().manual_seed(0))
    before = logits.clone()
    apply_masks(logits, [first, None, second])
    assert torch.equal(logits[1], before[1])
    for row, constraint in ((0, first), (2, second)):
        allowed = constraint.allowed()
        assert 0 < int(allowed.sum()) < model_cfg.vocab_size
        assert torch.equal(logits[row][allowed], before[row][allowed])
        assert torch.isneginf(logits[row][~allowed]).all()
    apply_masks(logits, [None, None, None])  # nothing constrained: nothing to do


def test_ids_past_the_tokenizer_are_never_allowed(default_model, model_cfg, hf):
    """A model's logits may be wider than its tokenizer (a padded embedding)."""
    padded = model_cfg.vocab_size + 40
    constraint = GrammarCompiler(default_model, padded, model_cfg.eos_token_ids).compile(
        grammar_for({"type": "json_object"})
    )
    for token in hf.encode('{"text": "', add_special_tokens=False):
        constraint.accept(token)
    allowed = constraint.allowed()
    assert allowed.shape == (padded,) and int(allowed[: len(hf)].sum()) > 1000
    assert not allowed[len(hf) :].any()
    logits = torch.zeros(1, padded)
    apply_masks(logits, [constraint])
    assert torch.isneginf(logits[0, len(hf) :]).all()
    with pytest.raises(ValueError, match="not allowed"):
        constraint.accept(padded - 1)


def test_misuse_raises(compiler, model_cfg):
    with pytest.raises(ValueError, match="does not compile"):
        compiler.compile("start: ((")
    with pytest.raises(ValueError, match="must be a str"):
        compiler.compile({"type": "object"})
    constraint = compiler.compile(GRAMMAR)
    with pytest.raises(ValueError, match="do not match"):
        apply_masks(torch.zeros(2, model_cfg.vocab_size), [constraint])
    with pytest.raises(ValueError, match="another vocabulary"):
        apply_masks(torch.zeros(1, model_cfg.vocab_size + 1), [constraint])
    with pytest.raises(ValueError, match="eos_token_ids"):
        GrammarCompiler("unused", model_cfg.vocab_size, ())
