"""Hash-chain keys for cached KV (torch-free, deterministic across processes and runs).

A prompt is cut into blocks of ``block_tokens`` tokens (an engine page or a store chunk). Block i's
key is ``H(key_{i-1} || fingerprint || tokens of block i)``, so a key names the whole prefix up to and
including its block, and two keys are equal only if the prefixes (and the models) are. The
fingerprint covers model, dtype and KV layout: workers whose KV bytes are not interchangeable never
share a key. Only full blocks get keys; the trailing partial block has none.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Sequence
from pathlib import Path

KEY_BYTES = 16
_ROOT = b"tandem-kv-v1"


def block_key(prev_key: bytes | None, tokens: Sequence[int], fingerprint: bytes) -> bytes:
    """Key of one full block given the key of the block before it (None for the first block)."""
    h = hashlib.blake2b(digest_size=KEY_BYTES)
    h.update(prev_key if prev_key is not None else _ROOT)
    h.update(fingerprint)
    h.update(struct.pack(f"<{len(tokens)}I", *tokens))
    return h.digest()


def chain_keys(
    tokens: Sequence[int],
    block_tokens: int,
    fingerprint: bytes,
    prev_key: bytes | None = None,
) -> list[bytes]:
    """Keys of every full ``block_tokens`` block of ``tokens``, continuing the chain after ``prev_key``."""
    if block_tokens <= 0:
        raise ValueError(f"block_tokens must be positive, got {block_tokens}")
    keys: list[bytes] = []
    for start in range(0, len(tokens) - block_tokens + 1, block_tokens):
        prev_key = block_key(prev_key, tokens[start : start + block_tokens], fingerprint)
        keys.append(prev_key)
    return keys


def model_fingerprint(model_dir: str | Path, dtype: str, layout: dict[str, int]) -> bytes:
    """Identity of a model's KV bytes: its config, a sample of its weights, the dtype and KV layout.

    ``layout`` names the KV geometry (layers, kv heads, head dim, page or chunk size). The weights
    are sampled (size plus first and last MiB of each file) rather than hashed whole, which is
    enough to tell apart two checkpoints of one config and costs milliseconds, not seconds.
    """
    model_dir = Path(model_dir)
    h = hashlib.blake2b(digest_size=KEY_BYTES)
    h.update((model_dir / "config.json").read_bytes())
    for path in sorted(model_dir.glob("*.safetensors")):
        size = path.stat().st_size
        h.update(path.name.encode() + struct.pack("<Q", size))
        with path.open("rb") as f:
            h.update(f.read(1 << 20))
            f.seek(max(0, size - (1 << 20)))
            h.update(f.read(1 << 20))
    h.update(dtype.encode())
    h.update(json.dumps(layout, sort_keys=True).encode())
    return h.digest()
