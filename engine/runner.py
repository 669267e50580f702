"""Model runner: owns the weights and the KV cache, turns a scheduled batch into logits."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch

from engine import kv_codec
from engine.attention import AttentionMetadata
from engine.config import EngineConfig, ModelConfig
from engine.decode_step import build_decode_step
from engine.loader import load_model
from engine.quant import small_batch_kernels
from engine.scheduler import ScheduledBatch
from kernels import backend_for, cpu_ext


def kv_bytes_per_page(cfg: ModelConfig, page_size: int, dtype: torch.dtype) -> int:
    return page_size * kv_codec.bytes_per_token(cfg, dtype, "auto")


class ModelRunner:
    def __init__(
        self, config: EngineConfig, model_cfg: ModelConfig, max_model_len: int, num_pages: int
    ) -> None:
        self.config = config
        self.model_cfg = model_cfg
        self.device = torch.device(config.device)
        self.page_size = config.page_size
        self.model = load_model(
            config.model,
            model_cfg,
            config.torch_dtype,
            self.device,
            max_model_len,
            config.quantization,
            config.prepack,
        )
        self.kv_cache = torch.zeros(
            model_cfg.num_layers, 2, model_cfg.num_kv_heads, num_pages, config.page_size, model_cfg.head_dim,
            dtype=config.torch_dtype, device=self.device,
        )  # fmt: skip
        self.ops = backend_for(self.device)
        # small decode steps of a quantized model on CPU: every layer in one compiled call
        self.decode_step = build_decode_step(self.model, self.kv_cache)

    def pack_pages(self, pages: list[int], layers: slice = slice(None)) -> torch.Tensor:
        """KV of ``pages`` as one contiguous buffer [layers, 2, kv_heads, len(pages), page_size,
        head_dim] (all layers, or those of ``layers``), encoded as the engine's ``kv_dtype`` says
        (see ``engine.kv_codec``)."""
        packed = self.ops.pack_pages(self.kv_cache[layers], torch.tensor(pages, device=self.device))
        return kv_codec.encode(packed, self.config.kv_dtype)

    def check_packed(
        self, kv: object, num_pages: int | None = None, what: str = "a KV buffer", layers: slice = slice(None)
    ) -> None:
        """``ValueError`` unless ``kv`` is packed pages (as :meth:`pack_pages` returns) of this
        cache's layout and dtype (all layers, or those of ``layers``): ``num_pages`` of them, or any
        positive number. An engine with ``kv_dtype="int8"`` also takes int8-encoded pages
        (``engine.kv_codec``); one without refuses them: its cache entries are exact, and what it
        computes over dequantized KV would be stored as if it were."""
        if not isinstance(kv, torch.Tensor):
            raise ValueError(f"{what} must be a tensor, got {type(kv).__name__}")
        layout, dtype = self.kv_cache[layers].shape, self.kv_cache.dtype
        if kv_codec.is_encoded(kv):
            if self.config.kv_dtype != "int8":
                raise ValueError(
                    f"{what} is int8-encoded KV; this engine serves exact {str(dtype).removeprefix('torch.')} "
                    "KV (start it with --kv-dtype int8 to take int8)"
                )
            layout, dtype = (*layout[:-1], kv_codec.wire_head_dim(layout[-1], "int8")), kv.dtype
        pages = kv.shape[3] if kv.dim() == len(layout) else None
        expect = (*layout[:3], num_pages if num_pages is not None else pages, *layout[4:])
        if kv.dtype != dtype or tuple(kv.shape) != expect or not pages:
            want = "N" if num_pages is None else num_pages
            raise ValueError(
                f"{what} is {str(kv.dtype).removeprefix('torch.')}{list(kv.shape)}; this engine's "
                f"pages need {str(dtype).removeprefix('torch.')}{[*layout[:3], want, *layout[4:]]}"
            )

    def unpack_pages(self, pages: list[int], chunk: torch.Tensor, layers: slice = slice(None)) -> None:
        """Write a packed buffer (as :meth:`pack_pages` returns; all layers, or those of
        ``layers``) into ``pages``."""
        self.check_packed(chunk, len(pages), layers=layers)
        pages_t = torch.tensor(pages, device=self.device)
        kv = kv_codec.decode(chunk.to(self.device), self.kv_cache.dtype)
        self.ops.unpack_pages(self.kv_cache[layers], pages_t, kv)

    @torch.inference_mode()
    def run(
        self,
        batch: ScheduledBatch,
        sample_rows: list[int],
        prompt_positions: dict[int, range] | None = None,
        on_layer: Callable[[int], None] | None = None,
    ) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        """Run every scheduled token. Returns float32 logits [len(sample_rows), V] for the batch rows
        in ``sample_rows`` (indices into ``batch.seqs``), at each one's last scheduled token; and for
        each row in ``prompt_positions``, float32 logits [len(range), V] at those token positions
        (which must be among the ones the row runs in this step). ``on_layer(i)`` is called once
        decoder layer ``i`` has written this step's KV."""
        input_ids, positions, meta, last_token_index = self._prepare(batch)
        tokens = input_ids.shape[0]
        # a decode-only step of a few tokens: the quantized linears' small-batch kernels (what the
        # compiled step runs), in one call where the model has it; prompts: the packed kernels
        small = 0 < tokens == meta.num_decode_tokens and tokens <= cpu_ext.SMALL_BATCH_ROWS
        step = self.decode_step
        with small_batch_kernels() if small else contextlib.nullcontext():
            if small and step is not None and on_layer is None:
                embedding = self.model.embed_tokens(input_ids)
                hidden = step(
                    embedding, positions, meta.slots, meta.decode_block_tables, meta.decode_context_lens
                )
            else:
                hidden = self.model(input_ids, positions, self.kv_cache, meta, on_layer)
            return self._logits(batch, hidden, sample_rows, prompt_positions, last_token_index)

    def _logits(
        self,
        batch: ScheduledBatch,
        hidden: torch.Tensor,
        sample_rows: list[int],
        prompt_positions: dict[int, range] | None,
        last_token_index: list[int],
    ) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        prompt_logits = {}
        for row, span in (prompt_positions or {}).items():
            seq, n = batch.seqs[row], batch.num_new_tokens[row]
            assert seq.num_computed_tokens <= span.start and span.stop <= seq.num_computed_tokens + n
            offset = last_token_index[row] - n + 1 - seq.num_computed_tokens  # hidden row of position 0
            prompt_logits[row] = self.model.compute_logits(hidden[offset + span.start : offset + span.stop])
        if not sample_rows:
            return hidden.new_empty((0, self.model_cfg.vocab_size), dtype=torch.float32), prompt_logits
        rows = torch.tensor([last_token_index[i] for i in sample_rows], device=self.device)
        return self.model.compute_logits(hidden.index_select(0, rows)), prompt_logits

    def _prepare(
        self, batch: ScheduledBatch
    ) -> tuple[torch.Tensor, torch.Tensor, AttentionMetadata, list[int]]:
        ps = self.page_size
        ids: list[int] = []
        pos: list[int] = []
        slots: list[int] = []
        last: list[int] = []
        decode_tables, decode_lens = [], []
        prefill_tables, prefill_lens, cu_q = [], [], [0]
        num_decode = 0
        for seq, n in zip(batch.seqs, batch.num_new_tokens):
            start = seq.num_computed_tokens
            end = start + n
            ids.extend(seq.token_ids[start:end])
            pos.extend(range(start, end))
            table = seq.block_table
            _extend_slots(slots, table, start, end, ps)
            last.append(len(ids) - 1)
            if n == 1:
                num_decode += 1
                decode_tables.append(table)
                decode_lens.append(end)
            else:
                prefill_tables.append(table)
                prefill_lens.append(end)
                cu_q.append(cu_q[-1] + n)
        dev = self.device
        meta = AttentionMetadata(
            slots=torch.tensor(slots, dtype=torch.long, device=dev),
            num_decode_tokens=num_decode,
            decode_block_tables=_pad_tables(decode_tables, dev),
            decode_context_lens=torch.tensor(decode_lens, dtype=torch.int32, device=dev),
            prefill_block_tables=_pad_tables(prefill_tables, dev),
            prefill_cu_seqlens_q=torch.tensor(cu_q, dtype=torch.int32, device=dev),
            prefill_context_lens=torch.tensor(prefill_lens, dtype=torch.int32, device=dev),
        )
        input_ids = torch.tensor(ids, dtype=torch.long, device=dev)
        positions = torch.tensor(pos, dtype=torch.long, device=dev)
        return input_ids, positions, meta, last


def _extend_slots(slots: list[int], table: list[int], start: int, end: int, page_size: int) -> None:
    """Append the KV slots of positions ``start..end-1`` (position p lives in slot
    ``table[p // page_size] * page_size + p % page_size``): one C-speed ``range`` per page rather
    than a Python expression per token."""
    first, last = start // page_size, (end - 1) // page_size
    for page in range(first, last + 1):
        base = (table[page] - page) * page_size  # slot of position p in this page: base + p
        slots.extend(range(base + max(start, page * page_size), base + min(end, (page + 1) * page_size)))


def _pad_tables(tables: list[list[int]], device: torch.device) -> torch.Tensor:
    width = max((len(t) for t in tables), default=0)
    padded = [t + [0] * (width - len(t)) for t in tables]
    return torch.tensor(padded, dtype=torch.int32, device=device).view(len(tables), width)
