"""Rotary-embedding tables, computed exactly as the reference implementation does (fp32)."""

from __future__ import annotations

import math
from typing import Any

import torch

SUPPORTED_SCALING = ("default", "linear", "llama3", "dynamic")


def inv_frequencies(head_dim: int, theta: float, scaling: dict[str, Any] | None) -> torch.Tensor:
    """Per-pair inverse frequencies, with ``rope_scaling`` applied (linear, llama3)."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim))
    kind = "default" if scaling is None else scaling.get("rope_type", scaling.get("type", "default"))
    if kind not in SUPPORTED_SCALING:
        raise ValueError(
            f"rope_scaling type {kind!r} is not supported (supported: {', '.join(SUPPORTED_SCALING)})"
        )
    if kind == "linear":
        return inv_freq / scaling["factor"]
    if kind == "llama3":
        return _llama3(inv_freq, scaling)
    # "dynamic" NTK only changes frequencies past the trained length, which the engine never
    # exceeds (max_model_len defaults to max_position_embeddings), so it equals "default" here.
    return inv_freq


def _llama3(inv_freq: torch.Tensor, scaling: dict[str, Any]) -> torch.Tensor:
    factor = scaling["factor"]
    low, high = scaling["low_freq_factor"], scaling["high_freq_factor"]
    old_len = scaling["original_max_position_embeddings"]
    low_wavelen, high_wavelen = old_len / low, old_len / high
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
    smooth = (old_len / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = ~(wavelen < high_wavelen) * ~(wavelen > low_wavelen)
    return torch.where(medium, smoothed, scaled)


def cos_sin_tables(
    head_dim: int, theta: float, scaling: dict[str, Any] | None, max_positions: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(cos, sin)``, each [max_positions, head_dim] fp32, rotate-half layout."""
    inv_freq = inv_frequencies(head_dim, theta, scaling)
    positions = torch.arange(max_positions, dtype=torch.float32)
    freqs = positions[:, None] * inv_freq[None, :]
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos(), emb.sin()
