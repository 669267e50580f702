"""Llama: the decoder every supported family shares (Mistral and Qwen2 are variants of it).

Projections are fused (q/k/v into one matmul, gate/up into another) and every hot operation goes
through the ``kernels`` backend of the model's device. The forward pass takes the flat batch the
runner builds: all scheduled tokens of all sequences concatenated, decode tokens first.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn

from engine.attention import AttentionMetadata
from engine.config import ModelConfig
from engine.rope import cos_sin_tables
from kernels import backend_for


class DecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        self.q_size = cfg.num_heads * cfg.head_dim
        self.kv_size = cfg.num_kv_heads * cfg.head_dim
        self.scale = cfg.head_dim**-0.5
        self.eps = cfg.rms_norm_eps
        self.sliding_window = cfg.sliding_window
        self.qkv_proj = nn.Linear(cfg.hidden_size, self.q_size + 2 * self.kv_size, bias=cfg.attention_bias)
        self.o_proj = nn.Linear(self.q_size, cfg.hidden_size, bias=False)
        self.gate_up_proj = nn.Linear(cfg.hidden_size, 2 * cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)
        self.input_layernorm = nn.Parameter(torch.ones(cfg.hidden_size))
        self.post_attention_layernorm = nn.Parameter(torch.ones(cfg.hidden_size))

    def forward(
        self,
        hidden: torch.Tensor,
        residual: torch.Tensor | None,
        positions: torch.Tensor,
        kv_layer: torch.Tensor,
        meta: AttentionMetadata,
        ops,
        rope_tables: tuple[torch.Tensor, torch.Tensor],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        hidden, residual = ops.rms_norm(hidden, self.input_layernorm, self.eps, residual)
        hidden = self.o_proj(self._attention(hidden, positions, kv_layer, meta, ops, rope_tables))
        hidden, residual = ops.rms_norm(hidden, self.post_attention_layernorm, self.eps, residual)
        hidden = self.down_proj(ops.silu_and_mul(self.gate_up_proj(hidden)))
        return hidden, residual

    def _attention(
        self, hidden, positions, kv_layer, meta: AttentionMetadata, ops, rope_tables
    ) -> torch.Tensor:
        num_tokens = hidden.shape[0]
        q, k, v = self.qkv_proj(hidden).split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        q = q.view(num_tokens, self.num_heads, self.head_dim)
        k = k.view(num_tokens, self.num_kv_heads, self.head_dim)
        v = v.reshape(num_tokens, self.num_kv_heads, self.head_dim)
        q, k = ops.rope(q, k, positions, *rope_tables)
        k_cache, v_cache = kv_layer[0], kv_layer[1]
        ops.write_kv(k, v, k_cache, v_cache, meta.slots)
        nd = meta.num_decode_tokens
        parts = []
        if nd:
            parts.append(ops.paged_decode_attention(
                q[:nd], k_cache, v_cache, meta.decode_block_tables, meta.decode_context_lens,
                self.scale, self.sliding_window,
            ))  # fmt: skip
        if nd < num_tokens:
            parts.append(ops.prefill_attention(
                q[nd:], k_cache, v_cache, meta.prefill_block_tables, meta.prefill_cu_seqlens_q,
                meta.prefill_context_lens, self.scale, self.sliding_window,
            ))  # fmt: skip
        out = parts[0] if len(parts) == 1 else torch.cat(parts)  # decode-only steps: no copy
        return out.reshape(num_tokens, self.q_size)


class LlamaForCausalLM(nn.Module):
    """Token ids in, hidden states out; ``compute_logits`` on the rows that get sampled."""

    def __init__(self, cfg: ModelConfig, max_positions: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.num_layers))
        self.norm = nn.Parameter(torch.ones(cfg.hidden_size))
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        self.max_positions = max_positions
        self.rope_tables: tuple[torch.Tensor, torch.Tensor] | None = None

    def init_rope(self, device: torch.device) -> None:
        """Compute the fp32 cos/sin tables (not parameters: they stay fp32 whatever the model dtype)."""
        cfg = self.cfg
        cos, sin = cos_sin_tables(cfg.head_dim, cfg.rope_theta, cfg.rope_scaling, self.max_positions)
        self.rope_tables = (cos.to(device), sin.to(device))

    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        kv_cache: torch.Tensor,
        meta: AttentionMetadata,
        on_layer: Callable[[int], None] | None = None,
    ) -> torch.Tensor:
        ops = backend_for(input_ids.device)
        tables = self.rope_tables
        assert tables is not None, "init_rope() must run before forward()"
        hidden, residual = self.embed_tokens(input_ids), None
        for i, layer in enumerate(self.layers):
            hidden, residual = layer(hidden, residual, positions, kv_cache[i], meta, ops, tables)
            if on_layer is not None:  # layer i's KV of this step is in the cache
                on_layer(i)
        hidden, _ = ops.rms_norm(hidden, self.norm, self.cfg.rms_norm_eps, residual)
        return hidden

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head(hidden).float()

    # -- weights ---------------------------------------------------------------------------------

    # checkpoint name suffix → (our parameter, which shard of it)
    _STACKED = {
        "self_attn.q_proj": ("qkv_proj", 0),
        "self_attn.k_proj": ("qkv_proj", 1),
        "self_attn.v_proj": ("qkv_proj", 2),
        "mlp.gate_proj": ("gate_up_proj", 0),
        "mlp.up_proj": ("gate_up_proj", 1),
    }
    _RENAMED = {
        "self_attn.o_proj": "o_proj",
        "mlp.down_proj": "down_proj",
    }

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Copy HF-named checkpoint tensors into the fused parameters; every parameter must be set."""
        params = dict(self.named_parameters())
        loaded: set[str] = set()
        for name, tensor in weights:
            target, shard = self._map_name(name)
            if target is None:
                continue
            if target not in params:
                raise ValueError(f"checkpoint tensor {name!r} has no place in {type(self).__name__}")
            param = params[target]
            dest = param.data if shard is None else self._shard(target, param.data, shard)
            if dest.shape != tensor.shape:
                raise ValueError(
                    f"checkpoint tensor {name!r} has shape {tuple(tensor.shape)}, expected {tuple(dest.shape)}"
                )
            dest.copy_(tensor)
            loaded.add(f"{target}#{shard}")
        if self.cfg.tie_word_embeddings:
            self.lm_head.weight = self.embed_tokens.weight
        missing = [n for n in self._expected_keys() if n not in loaded]
        if missing:
            raise ValueError(f"checkpoint is missing {len(missing)} tensors, e.g. {missing[:3]}")

    def _map_name(self, name: str) -> tuple[str | None, int | None]:
        name = name.removeprefix("model.")
        if "rotary_emb" in name:
            return None, None
        if name == "lm_head.weight" and self.cfg.tie_word_embeddings:
            return None, None
        if name in ("embed_tokens.weight", "lm_head.weight"):
            return name, None
        if name == "norm.weight":
            return "norm", None
        if name.startswith("layers."):
            _, idx, rest = name.split(".", 2)
            prefix = f"layers.{idx}."
            if rest in ("input_layernorm.weight", "post_attention_layernorm.weight"):
                return prefix + rest.removesuffix(".weight"), None
            module, kind = rest.rsplit(".", 1)
            if module in self._STACKED:
                fused, shard = self._STACKED[module]
                return f"{prefix}{fused}.{kind}", shard
            if module in self._RENAMED:
                return f"{prefix}{self._RENAMED[module]}.{kind}", None
        return name, None

    def _shard(self, target: str, data: torch.Tensor, shard: int) -> torch.Tensor:
        cfg = self.cfg
        if ".qkv_proj." in target:
            q, kv = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
            sizes = [q, kv, kv]
        else:
            sizes = [cfg.intermediate_size] * 2
        start = sum(sizes[:shard])
        return data.narrow(0, start, sizes[shard])

    def _expected_keys(self) -> list[str]:
        keys = []
        for name, _ in self.named_parameters():
            if self.cfg.tie_word_embeddings and name == "lm_head.weight":
                continue
            fused = name.rsplit(".", 2)[-2] if "." in name else ""
            if fused == "qkv_proj":
                keys += [f"{name}#{s}" for s in range(3)]
            elif fused == "gate_up_proj":
                keys += [f"{name}#{s}" for s in range(2)]
            else:
                keys.append(f"{name}#None")
        return keys
