"""A GGUF's own quantized weights, kept beside the float checkpoint converted from it, so that
``--quantization int4`` serves the file's Q4_1 codes instead of quantizing their float32 copy again.

``tandem convert`` writes, next to the safetensors, ``gguf-blocks/blocks.safetensors``: each Q4_1 or
Q8_0 tensor of the GGUF as its raw blocks (uint8 [out_features, in_features / 32 * block bytes]),
under its Hugging Face name, rows in Hugging Face order (llama.cpp stores Llama's Q and K rows
permuted for its RoPE; they are put back, as ``transformers`` does with the floats). The blocks map
onto :mod:`engine.quant`'s weights exactly:

- Q4_1 (``d``, ``m`` float16, 32 4-bit codes ``q``; ``w = q * d + m``) is :class:`Int4Weight` with
  ``code = q``, ``scale = d``, ``zero = m + 8 * d`` (``w = (code - 8) * scale + zero``), groups of 32;
- Q8_0 (``d`` float16, 32 int8 codes ``q``; ``w = q * d``) is :class:`Int8Weight` with
  groups of 32: the tied embedding becomes the int8 LM head.

At load, every block tensor is checked against the float weight it must equal (the one
``transformers`` dequantized from the same file); one that does not (a directory edited since, or
another file's blocks) is not used, and that linear is quantized from its float weight as usual.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from engine.quant import Int4Weight, Int8Weight

log = logging.getLogger("tandem.gguf")

BLOCKS_FILE = Path("gguf-blocks") / "blocks.safetensors"
BLOCK = 32  # values per block, Q4_1 and Q8_0 alike
Q4_1_BYTES, Q8_0_BYTES = 20, 34
# GGUF tensor name (after "blk.N.") -> Hugging Face module name (after "model.layers.N.")
_LAYER_NAMES = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}


def write_blocks(gguf_path: Path, out_dir: Path) -> int:
    """Write ``out_dir / BLOCKS_FILE`` from a Llama-architecture GGUF's Q4_1 and Q8_0 tensors;
    returns how many it wrote (0, and no file, for another architecture or none of those types)."""
    from gguf import GGMLQuantizationType, GGUFReader

    reader = GGUFReader(gguf_path)
    arch = _field(reader, "general.architecture")
    if arch != "llama":
        log.info("%s is %s, not llama: its quantized blocks are not kept", gguf_path.name, arch)
        return 0
    num_heads = int(_field(reader, "llama.attention.head_count"))
    num_kv_heads = int(_field(reader, "llama.attention.head_count_kv") or num_heads)
    kinds = {GGMLQuantizationType.Q4_1: "q4_1", GGMLQuantizationType.Q8_0: "q8_0"}
    tensors, metadata = {}, {}
    for t in reader.tensors:
        kind = kinds.get(t.tensor_type)
        name = _hf_name(t.name)
        if kind is None or name is None:
            continue
        blocks = np.array(t.data)  # a writable copy: [out_features, blocks per row * block bytes]
        if t.name.endswith("attn_q.weight"):
            blocks = _unpermute_rows(blocks, num_heads)
        elif t.name.endswith("attn_k.weight"):
            blocks = _unpermute_rows(blocks, num_kv_heads)
        tensors[name] = torch.from_numpy(blocks)
        metadata[name] = kind
    if tensors:
        (out_dir / BLOCKS_FILE).parent.mkdir(parents=True, exist_ok=True)
        save_file(tensors, str(out_dir / BLOCKS_FILE), metadata=metadata)
    return len(tensors)


def _field(reader, key: str):
    field = reader.fields.get(key)
    if field is None:
        return None
    value = field.parts[field.data[0]]
    return bytes(value).decode() if value.dtype == np.uint8 else value[0]


def _hf_name(gguf_name: str) -> str | None:
    if gguf_name == "token_embd.weight":
        return "model.embed_tokens.weight"
    if gguf_name == "output.weight":
        return "lm_head.weight"
    parts = gguf_name.split(".")
    if len(parts) == 4 and parts[0] == "blk" and parts[2] in _LAYER_NAMES:
        return f"model.layers.{parts[1]}.{_LAYER_NAMES[parts[2]]}.weight"
    return None


def _unpermute_rows(rows: np.ndarray, num_heads: int) -> np.ndarray:
    """llama.cpp's converter interleaves each head's rows for its RoPE (``transformers`` undoes it on
    the floats, ``_reverse_permute_weights``); the same row order, undone on whole rows of blocks."""
    half = rows.shape[0] // num_heads // 2
    return rows.reshape(num_heads, half, 2, -1).swapaxes(1, 2).reshape(rows.shape)


def has_blocks(model_dir: Path) -> bool:
    return (Path(model_dir) / BLOCKS_FILE).is_file()


def read_blocks(model_dir: Path) -> dict[str, Int4Weight | Int8Weight]:
    """Every block tensor of ``model_dir`` as the weight it is, by Hugging Face name."""
    weights: dict[str, Int4Weight | Int8Weight] = {}
    with safe_open(str(Path(model_dir) / BLOCKS_FILE), framework="pt") as f:
        kinds = f.metadata() or {}
        for name in f.keys():  # noqa: SIM118 - safe_open is not a mapping
            blocks = f.get_tensor(name)
            weights[name] = q4_1_weight(blocks) if kinds.get(name) == "q4_1" else q8_0_weight(blocks)
    return weights


def q4_1_weight(blocks: torch.Tensor) -> Int4Weight:
    """Q4_1 blocks uint8 [N, K / 32 * 20] as the int4 weight they are (scales and zeros float32)."""
    n = blocks.shape[0]
    b = blocks.view(n, -1, Q4_1_BYTES)
    d = b[..., 0:2].contiguous().view(torch.float16).float()  # [N, groups, 1]
    m = b[..., 2:4].contiguous().view(torch.float16).float()
    qs = b[..., 4:]
    codes = torch.cat([qs & 0xF, qs >> 4], dim=-1)  # values 0..15 of a block, then 16..31
    scales_zeros = torch.cat([d, m + 8 * d], dim=-1).transpose(0, 1).contiguous()  # [groups, N, 2]
    return Int4Weight(codes.reshape(n, -1), scales_zeros, BLOCK)


def q8_0_weight(blocks: torch.Tensor) -> Int8Weight:
    """Q8_0 blocks uint8 [N, K / 32 * 34] as the int8 weight they are, a scale per 32 inputs."""
    n = blocks.shape[0]
    b = blocks.view(n, -1, Q8_0_BYTES)
    d = b[..., 0:2].contiguous().view(torch.float16).float().squeeze(-1)  # [N, groups]
    codes = b[..., 2:].contiguous().view(torch.int8)
    return Int8Weight(codes.reshape(n, -1), d.t().contiguous(), BLOCK)


def matches(weight: Int4Weight | Int8Weight, reference: torch.Tensor) -> bool:
    """Whether ``weight`` is ``reference`` (the float weight dequantized from the same blocks), up to
    float rounding."""
    if tuple(weight.codes.shape) != tuple(reference.shape):
        return False
    return torch.allclose(weight.dequantize().float(), reference.float(), rtol=1e-5, atol=1e-6)


def fused_for(
    model: torch.nn.Module, weights: dict[str, Int4Weight | Int8Weight]
) -> dict[str, Int4Weight | Int8Weight]:
    """The block weights by the path of the linear of ``model`` they fill (Q, K and V rows
    concatenated for ``qkv_proj``, gate and up for ``gate_up_proj``; a tied embedding's Q8_0 for
    ``lm_head``), each checked against that linear's float weight: those that do not equal it, or
    cover only part of a fused linear, are left out (and logged)."""
    shards: dict[str, dict[int, Int4Weight | Int8Weight]] = {}
    for name, weight in weights.items():
        target, shard = model._map_name(name)
        if target == "embed_tokens.weight" and model.cfg.tie_word_embeddings:
            target = "lm_head.weight"
        if target is None or not target.endswith(".weight"):
            continue
        shards.setdefault(target.removesuffix(".weight"), {})[shard or 0] = weight
    modules = dict(model.named_modules())
    fused: dict[str, Int4Weight | Int8Weight] = {}
    for path, parts in shards.items():
        linear = modules.get(path)
        weight = _concat([parts[i] for i in sorted(parts)]) if len(parts) > 1 else parts[0]
        if not isinstance(linear, torch.nn.Linear) or weight is None or not matches(weight, linear.weight):
            log.warning("%s: the GGUF's blocks do not match its weights; quantizing those instead", path)
            continue
        fused[path] = weight
    return fused


def _concat(parts: list[Int4Weight | Int8Weight]) -> Int4Weight | Int8Weight | None:
    """Weights stacked along their outputs (rows), or None if they are not of one kind and group."""
    first = parts[0]
    if any(type(p) is not type(first) or p.group_size != first.group_size for p in parts):
        return None
    codes = torch.cat([p.codes for p in parts])
    if isinstance(first, Int4Weight):
        return Int4Weight(codes, torch.cat([p.scales_zeros for p in parts], dim=1), first.group_size)
    return Int8Weight(codes, torch.cat([p.scales for p in parts], dim=-1), first.group_size)
