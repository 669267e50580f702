"""Cost profiles: what a kind of instance costs, in one small JSON file per (model, hardware).

The simulator (``sim/``) runs a cluster on a profile, and the router's default ``CostModel`` is
the ``cpu-smollm2`` profile's (written by ``bench/profile_fit.py`` from the engine and transfer
benchmarks' results). A file holds, all in seconds, bytes and tokens::

    {"name": ..., "description": ..., "sources": [...], "derivation": [...],
     "prefill":  {"fixed_s", "per_token_s", "per_token_context_s", "max_batched_tokens"},
     "decode":   {"base_s", "per_seq_s", "per_context_token_s", "max_num_seqs"},
     "kv":       {"bytes_per_token", "chunk_tokens", "cache_tokens_per_instance", "store_tokens_per_node"},
     "fetch":    {"latency_s", "bytes_per_s"},
     "handoff":  {"latency_s", "bytes_per_s"},
     "disk":     {"latency_s", "bytes_per_s"},     (optional: a store node's disk tier)
     "slo":      {"ttft_s", "tbt_s"}}

- A prefill step of ``n`` new tokens whose sequences already hold ``c`` tokens of context each
  costs ``fixed_s + per_token_s * n + per_token_context_s * sum(n_i * c_i)`` (attention to the
  prefix), at most ``max_batched_tokens`` tokens a step.
- A decode step of ``b`` sequences holding ``C`` context tokens in all costs
  ``base_s + per_seq_s * b + per_context_token_s * C``, at most ``max_num_seqs`` sequences.
- KV: ``bytes_per_token`` (all layers, K and V); a chunk is ``chunk_tokens`` tokens; each
  instance caches ``cache_tokens_per_instance`` tokens of KV (its GPU or engine pages), each store
  node ``store_tokens_per_node``.
- Moving ``x`` bytes costs ``latency_s + x / bytes_per_s``: ``fetch`` from a store node into a
  prefill instance, ``handoff`` from prefill to decode, ``disk`` from a store node's disk tier
  into its memory (before the fetch); without a ``disk`` section a disk read is priced at 0.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

from router.conductor.config import CostModel, Slo

PROFILES_DIR = Path(__file__).resolve().parent / "profiles"
DEFAULT_ROUTER_PROFILE = "cpu-smollm2"  # what the router's default costs come from


@dataclass(frozen=True)
class PrefillCosts:
    fixed_s: float
    per_token_s: float
    per_token_context_s: float
    max_batched_tokens: int


@dataclass(frozen=True)
class DecodeCosts:
    base_s: float
    per_seq_s: float
    per_context_token_s: float
    max_num_seqs: int


@dataclass(frozen=True)
class KvSizes:
    bytes_per_token: int
    chunk_tokens: int
    cache_tokens_per_instance: int
    store_tokens_per_node: int


@dataclass(frozen=True)
class Link:
    latency_s: float
    bytes_per_s: float


@dataclass(frozen=True)
class SloTargets:
    ttft_s: float
    tbt_s: float


_SECTIONS = {
    "prefill": PrefillCosts, "decode": DecodeCosts, "kv": KvSizes, "fetch": Link, "handoff": Link,
    "slo": SloTargets,
}  # fmt: skip
_POSITIVE = {
    ("fetch", "bytes_per_s"),
    ("handoff", "bytes_per_s"),
    ("disk", "bytes_per_s"),
    ("kv", "chunk_tokens"),
    ("slo", "ttft_s"),
    ("slo", "tbt_s"),
}


@dataclass(frozen=True)
class CostProfile:
    name: str
    description: str
    prefill: PrefillCosts
    decode: DecodeCosts
    kv: KvSizes
    fetch: Link
    handoff: Link
    slo: SloTargets
    sources: tuple[str, ...] = ()
    disk: Link | None = None

    def prefill_step_s(self, num_tokens: int, context_token_products: float = 0.0) -> float:
        """A prefill step of ``num_tokens`` new tokens; ``context_token_products`` = sum over its
        sequences of new tokens x context already held."""
        p = self.prefill
        return p.fixed_s + p.per_token_s * num_tokens + p.per_token_context_s * context_token_products

    def decode_step_s(self, num_seqs: int, context_tokens: int) -> float:
        d = self.decode
        return d.base_s + d.per_seq_s * num_seqs + d.per_context_token_s * context_tokens

    def fetch_s(self, num_tokens: int) -> float:
        return (
            0.0
            if num_tokens <= 0
            else self.fetch.latency_s + num_tokens * self.kv.bytes_per_token / self.fetch.bytes_per_s
        )

    def handoff_s(self, num_tokens: int) -> float:
        return self.handoff.latency_s + num_tokens * self.kv.bytes_per_token / self.handoff.bytes_per_s

    def cost_model(self) -> CostModel:
        """The conductor's costs on this profile."""
        return CostModel(
            prefill_fixed_s=self.prefill.fixed_s,
            prefill_per_token_s=self.prefill.per_token_s,
            prefill_per_token_context_s=self.prefill.per_token_context_s,
            fetch_fixed_s=self.fetch.latency_s,
            fetch_per_byte_s=1.0 / self.fetch.bytes_per_s,
            disk_fixed_s=self.disk.latency_s if self.disk else 0.0,
            disk_per_byte_s=1.0 / self.disk.bytes_per_s if self.disk else 0.0,
            decode_base_s=self.decode.base_s,
            decode_per_seq_s=self.decode.per_seq_s,
            decode_per_context_token_s=self.decode.per_context_token_s,
        )

    def slo_targets(self) -> Slo:
        return Slo(ttft_s=self.slo.ttft_s, tbt_s=self.slo.tbt_s)


def parse_profile(data: dict, where: str = "profile") -> CostProfile:
    """A profile from its JSON object; ``ValueError`` naming the missing or bad field."""
    sections = {name: _section(data, name, cls, where) for name, cls in _SECTIONS.items()}
    disk = _section(data, "disk", Link, where) if "disk" in data else None
    return CostProfile(
        name=str(data.get("name", where)), description=str(data.get("description", "")),
        sources=tuple(data.get("sources", ())), disk=disk, **sections,
    )  # fmt: skip


def _section(data: dict, section: str, cls: type, where: str):
    raw = data.get(section)
    names = [f.name for f in dataclasses.fields(cls)]
    if not isinstance(raw, dict):
        raise ValueError(f"{where}: missing section {section!r} (fields {', '.join(names)})")
    values = {}
    for f in dataclasses.fields(cls):
        value = raw.get(f.name)
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
            raise ValueError(f"{where}: {section}.{f.name} must be a number >= 0, got {value!r}")
        if (section, f.name) in _POSITIVE and value <= 0:
            raise ValueError(f"{where}: {section}.{f.name} must be positive, got {value!r}")
        values[f.name] = int(value) if f.type == "int" else float(value)
    return cls(**values)


def load_profile(name_or_path: str | Path) -> CostProfile:
    """A shipped profile by name (``profile_names()``), or a profile file by path."""
    path = Path(name_or_path)
    if not path.suffix:
        path = PROFILES_DIR / f"{name_or_path}.json"
    if not path.is_file():
        raise ValueError(f"no cost profile {str(name_or_path)!r}; shipped: {', '.join(profile_names())}")
    return parse_profile(json.loads(path.read_text()), str(path))


def profile_names() -> list[str]:
    return sorted(p.stem for p in PROFILES_DIR.glob("*.json"))


def default_costs() -> CostModel:
    """The router's default costs: the ``cpu-smollm2`` profile's."""
    return load_profile(DEFAULT_ROUTER_PROFILE).cost_model()
