"""Configuration: the model's shape read from an HF ``config.json``, and the engine's knobs."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
QUANTIZATIONS = ("int4", "int8")  # weight-only; see engine.quant
KV_DTYPES = ("auto", "int8")  # KV as it leaves an engine; see engine.kv_codec (auto: the cache's dtype)


@dataclass(frozen=True)
class ModelConfig:
    """What the runtime needs to know about a Llama-family checkpoint."""

    architecture: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float
    rope_theta: float
    rope_scaling: dict[str, Any] | None
    max_position_embeddings: int
    tie_word_embeddings: bool
    attention_bias: bool
    sliding_window: int | None
    eos_token_ids: tuple[int, ...]

    def __post_init__(self) -> None:
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"num_attention_heads ({self.num_heads}) must be a multiple of "
                f"num_key_value_heads ({self.num_kv_heads})"
            )
        if self.head_dim % 2:
            raise ValueError(f"head_dim must be even for rotary embeddings, got {self.head_dim}")

    @classmethod
    def from_dir(cls, model_dir: str | Path) -> ModelConfig:
        model_dir = Path(model_dir)
        path = model_dir / "config.json"
        if not path.is_file():
            raise ValueError(f"{model_dir} is not an HF model directory: no config.json")
        return cls.from_hf(json.loads(path.read_text()), _generation_eos(model_dir))

    @classmethod
    def from_hf(cls, raw: dict[str, Any], extra_eos: tuple[int, ...] = ()) -> ModelConfig:
        archs = raw.get("architectures") or []
        if not archs:
            raise ValueError("config.json names no 'architectures'; cannot pick a model implementation")
        hidden, heads = raw["hidden_size"], raw["num_attention_heads"]
        rope_theta, rope_scaling = _rope_params(raw)
        sliding = raw.get("sliding_window")
        if raw.get("model_type") == "qwen2" or "use_sliding_window" in raw:
            if raw.get("use_sliding_window"):
                raise ValueError("Qwen2 with use_sliding_window=true is not supported")
            sliding = None
        eos = raw.get("eos_token_id")
        eos_ids = tuple(eos if isinstance(eos, list) else ([eos] if eos is not None else []))
        return cls(
            architecture=archs[0],
            vocab_size=raw["vocab_size"],
            hidden_size=hidden,
            intermediate_size=raw["intermediate_size"],
            num_layers=raw["num_hidden_layers"],
            num_heads=heads,
            num_kv_heads=raw.get("num_key_value_heads") or heads,
            head_dim=raw.get("head_dim") or hidden // heads,
            rms_norm_eps=raw.get("rms_norm_eps", 1e-6),
            rope_theta=rope_theta,
            rope_scaling=rope_scaling,
            max_position_embeddings=raw.get("max_position_embeddings", 2048),
            tie_word_embeddings=raw.get("tie_word_embeddings", False),
            attention_bias=raw.get("attention_bias", False) or raw.get("model_type") == "qwen2",
            sliding_window=sliding,
            eos_token_ids=tuple(dict.fromkeys(eos_ids + extra_eos)),
        )


def _rope_params(raw: dict[str, Any]) -> tuple[float, dict[str, Any] | None]:
    """(theta, scaling) from either the transformers>=5 ``rope_parameters`` or the older keys."""
    params = raw.get("rope_parameters")
    if isinstance(params, dict) and "rope_theta" in params:
        scaling = {k: v for k, v in params.items() if k != "rope_theta"}
        kind = scaling.get("rope_type", scaling.get("type", "default"))
        return float(params["rope_theta"]), (None if kind == "default" else scaling)
    scaling = raw.get("rope_scaling")
    if scaling is not None and scaling.get("rope_type", scaling.get("type")) == "default":
        scaling = None
    return float(raw.get("rope_theta", 10000.0)), scaling


def _generation_eos(model_dir: Path) -> tuple[int, ...]:
    path = model_dir / "generation_config.json"
    if not path.is_file():
        return ()
    eos = json.loads(path.read_text()).get("eos_token_id")
    if eos is None:
        return ()
    return tuple(eos) if isinstance(eos, list) else (eos,)


@dataclass(frozen=True)
class EngineConfig:
    """Knobs of one engine instance. Derived values are properties; vary with ``dataclasses.replace``."""

    model: str
    dtype: str = "float32"
    device: str = "cpu"
    page_size: int = 16
    num_pages: int | None = None  # None: size the KV cache from free memory
    max_num_seqs: int = 64
    max_num_batched_tokens: int = 2048
    max_model_len: int | None = None  # None: the model's max_position_embeddings
    enable_prefix_caching: bool = True
    kv_cache_memory_fraction: float = 0.2  # of free memory, when num_pages is None
    quantization: str | None = None  # weight-only "int8" | "int4" of the linears; None: dtype
    kv_dtype: str = "auto"  # KV as it leaves the engine (hand-off, store): "auto" (the cache's) | "int8"
    prepack: bool = (
        True  # CPU float32: linears through oneDNN with weights reordered at load (engine.prepack)
    )

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {self.dtype!r}")
        if self.quantization is not None and self.quantization not in QUANTIZATIONS:
            raise ValueError(
                f"quantization must be one of {list(QUANTIZATIONS)} or None, got {self.quantization!r}"
            )
        if self.kv_dtype not in KV_DTYPES:
            raise ValueError(f"kv_dtype must be one of {list(KV_DTYPES)}, got {self.kv_dtype!r}")
        if self.page_size < 1:
            raise ValueError(f"page_size must be >= 1, got {self.page_size}")
        if self.num_pages is not None and self.num_pages < 1:
            raise ValueError(f"num_pages must be >= 1 or None, got {self.num_pages}")
        if self.max_num_seqs < 1:
            raise ValueError(f"max_num_seqs must be >= 1, got {self.max_num_seqs}")
        if self.max_num_batched_tokens < 1:
            raise ValueError(f"max_num_batched_tokens must be >= 1, got {self.max_num_batched_tokens}")
        if not 0 < self.kv_cache_memory_fraction < 1:
            raise ValueError(
                f"kv_cache_memory_fraction must be in (0, 1), got {self.kv_cache_memory_fraction}"
            )

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    @property
    def numerics(self) -> str:
        """What decides the KV bytes besides the checkpoint: the dtype, and the weights' quantization
        (a quantized model's KV differs from the full-precision one's, so caches must not mix), and
        KV that travels quantized (pages filled from it hold dequantized values)."""
        numerics = self.dtype if self.quantization is None else f"{self.dtype}+{self.quantization}"
        return numerics if self.kv_dtype == "auto" else f"{numerics}+kv-{self.kv_dtype}"
