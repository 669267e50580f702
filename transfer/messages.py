"""Every message that crosses a socket, as typed, frozen structs: the whole protocol in one file.

A message class names its ``kind`` tag and ``version`` at definition
(``class GetRequest(Message, kind="get_request")``) and registers itself in ``MESSAGE_TYPES``.
Its fields are plain values that MessagePack carries (int, float, str, bytes, bool, tuples and
str-keyed dicts of those, ``X | None``) or frozen dataclasses of such fields (travelling as maps). Bulk data goes in a field named ``buffers`` holding
``Buffer`` s: each travels as its own raw frame, zero-copy, described in the header by dtype and
shape. ``transfer.wire`` checks every field against these annotations on decode, and each class's
``__post_init__`` checks what the types cannot (lengths that must agree).

Changing a message's fields means bumping its ``version``: peers reject versions they don't know.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

# Item size of every dtype a buffer may be described with (names as torch and numpy spell them).
DTYPE_ITEMSIZE: dict[str, int] = {
    "bool": 1,
    "uint8": 1,
    "int8": 1,
    "float8_e4m3fn": 1,
    "float8_e5m2": 1,
    "uint16": 2,
    "int16": 2,
    "float16": 2,
    "bfloat16": 2,
    "uint32": 4,
    "int32": 4,
    "float32": 4,
    "uint64": 8,
    "int64": 8,
    "float64": 8,
}

MESSAGE_TYPES: dict[str, type[Message]] = {}


@dataclass(frozen=True)
class Buffer:
    """A C-contiguous byte buffer (anything exposing the buffer protocol) described as an array.

    Invariant: ``nbytes == prod(shape) * itemsize(dtype)``. ``data`` is never copied by
    ``transfer``: the sender must not modify it until the request it belongs to has been answered.
    """

    data: Any
    dtype: str
    shape: tuple[int, ...]
    # xxh3-64 of the bytes as their producer computed it (None: ``transfer.wire`` computes it when
    # sending). A store node keeps a chunk's and sends it back with the bytes, so a reader detects
    # a change made anywhere between the producer and itself.
    checksum: int | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if self.dtype not in DTYPE_ITEMSIZE:
            raise ValueError(f"unknown buffer dtype {self.dtype!r}; known: {sorted(DTYPE_ITEMSIZE)}")
        if any(not isinstance(d, int) or d < 0 for d in self.shape):
            raise ValueError(f"buffer shape must be non-negative ints, got {self.shape!r}")
        view = memoryview(self.data)
        if not view.c_contiguous:
            raise ValueError("buffer data must be C-contiguous; pass a contiguous copy")
        expected = math.prod(self.shape) * DTYPE_ITEMSIZE[self.dtype]
        if view.nbytes != expected:
            raise ValueError(
                f"buffer holds {view.nbytes} bytes but {self.dtype}{list(self.shape)} needs {expected}"
            )

    @classmethod
    def raw(cls, data: Any) -> Buffer:
        """Untyped bytes: a flat uint8 buffer."""
        return cls(data, "uint8", (memoryview(data).nbytes,))

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * DTYPE_ITEMSIZE[self.dtype]


class Message:
    """Base of all wire messages; subclasses are frozen dataclasses registered by ``kind``."""

    KIND: ClassVar[str]
    VERSION: ClassVar[int]

    def __init_subclass__(cls, *, kind: str, version: int = 1, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if kind in MESSAGE_TYPES:
            raise ValueError(f"message kind {kind!r} is defined twice")
        cls.KIND = kind
        cls.VERSION = version
        MESSAGE_TYPES[kind] = cls


def _check_same_length(kind: str, name_a: str, a: tuple, name_b: str, b: tuple) -> None:
    if len(a) != len(b):
        raise ValueError(f"{kind}: {len(a)} {name_a} but {len(b)} {name_b}")


# ---- generic -----------------------------------------------------------------------------------

BAD_REQUEST = "bad_request"  # the request could not be decoded or is invalid: fix the sender
UNAVAILABLE = "unavailable"  # a dependency of the server (e.g. the Redis index) is down: retry later
INTERNAL = "internal"  # the server hit a bug; it is shutting down
DRAINING = "draining"  # the worker that answers is shutting down: route the request elsewhere


@dataclass(frozen=True)
class ErrorReply(Message, kind="error"):
    """The answer to a request that failed. ``code`` is one of the constants above."""

    code: str
    message: str


# ---- store node ----------------------------------------------------------------------------------
# Keys are chunk keys (``kvstore.keys``). Every request is batched; replies answer key by key, in
# request order.


@dataclass(frozen=True)
class PutRequest(Message, kind="store_put"):
    """Store ``buffers[i]`` under ``keys[i]``. A key already held is only touched (keys name content)."""

    keys: tuple[bytes, ...]
    buffers: tuple[Buffer, ...]

    def __post_init__(self) -> None:
        _check_same_length(self.KIND, "keys", self.keys, "buffers", self.buffers)


@dataclass(frozen=True)
class PutReply(Message, kind="store_put_reply"):
    """``stored[i]`` is False when the node had no room for ``keys[i]`` (every slot pinned)."""

    stored: tuple[bool, ...]
    num_evicted: int


@dataclass(frozen=True)
class GetRequest(Message, kind="store_get"):
    keys: tuple[bytes, ...]


@dataclass(frozen=True)
class GetReply(Message, kind="store_get_reply"):
    """``buffers`` holds one buffer per True in ``found``, in key order (dtype and shape as put)."""

    found: tuple[bool, ...]
    buffers: tuple[Buffer, ...]

    def __post_init__(self) -> None:
        if sum(self.found) != len(self.buffers):
            raise ValueError(f"{self.KIND}: {sum(self.found)} keys found but {len(self.buffers)} buffers")


# In place: a client on the node's host maps the node's arena (``AttachReply.path``, checked by
# its ``token``) and copies chunk bytes in and out itself; only these small messages cross the
# socket. A lease names the chunks pinned for one such transfer: released by the client, or by
# the node once ``lease_s`` passes (a put's uncommitted chunks are then dropped). Only the
# connection that took a lease may commit or release it.


@dataclass(frozen=True)
class AttachRequest(Message, kind="store_attach"):
    pass


@dataclass(frozen=True)
class AttachReply(Message, kind="store_attach_reply"):
    """Where the node's arena can be mapped (``path`` empty: it cannot). The file's first
    ``len(token)`` bytes are ``token``: a client that reads them there has the node's arena."""

    path: str
    token: bytes
    size: int


@dataclass(frozen=True)
class ChunkSpec:
    """A chunk's description without its bytes: dtype, shape, its producer's checksum."""

    dtype: str
    shape: tuple[int, ...]
    checksum: int

    def __post_init__(self) -> None:
        if self.dtype not in DTYPE_ITEMSIZE:
            raise ValueError(f"unknown chunk dtype {self.dtype!r}")
        if any(d < 0 for d in self.shape):
            raise ValueError(f"chunk shape must be non-negative, got {self.shape!r}")

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * DTYPE_ITEMSIZE[self.dtype]


@dataclass(frozen=True)
class InPlaceGetRequest(Message, kind="store_get_in_place"):
    keys: tuple[bytes, ...]


@dataclass(frozen=True)
class InPlaceGetReply(Message, kind="store_get_in_place_reply"):
    """``offsets[i]`` / ``specs[i]``: where in the arena the i-th found key's bytes are and what
    they are, pinned until ``lease`` is released (``ReleaseRequest``) or ``lease_s`` passes."""

    found: tuple[bool, ...]
    offsets: tuple[int, ...]
    specs: tuple[ChunkSpec, ...]
    lease: int
    lease_s: float
    token: bytes  # the arena's: a client holding another node's mapping must attach again

    def __post_init__(self) -> None:
        _check_same_length(self.KIND, "offsets", self.offsets, "specs", self.specs)
        if sum(self.found) != len(self.offsets):
            raise ValueError(f"{self.KIND}: {sum(self.found)} keys found but {len(self.offsets)} offsets")


@dataclass(frozen=True)
class ReserveRequest(Message, kind="store_reserve"):
    """Slots for chunks the client writes itself, then commits (``CommitRequest``)."""

    keys: tuple[bytes, ...]
    specs: tuple[ChunkSpec, ...]

    def __post_init__(self) -> None:
        _check_same_length(self.KIND, "keys", self.keys, "specs", self.specs)


@dataclass(frozen=True)
class ReserveReply(Message, kind="store_reserve_reply"):
    """``offsets[i]``: where to write ``keys[i]``'s bytes; -1 where nothing is to be written
    (``stored[i]`` True: already held; False: no room)."""

    stored: tuple[bool, ...]
    offsets: tuple[int, ...]
    lease: int
    lease_s: float
    token: bytes

    def __post_init__(self) -> None:
        _check_same_length(self.KIND, "stored", self.stored, "offsets", self.offsets)


@dataclass(frozen=True)
class CommitRequest(Message, kind="store_commit"):
    """The reserved chunks of ``lease`` are written: list them. Answered with a ``PutReply``
    once the index knows (an ``ErrorReply`` if the lease has lapsed: nothing was stored)."""

    lease: int


@dataclass(frozen=True)
class ReleaseRequest(Message, kind="store_release"):
    """The client is done reading the chunks of ``lease``."""

    lease: int


@dataclass(frozen=True)
class ReleaseReply(Message, kind="store_release_reply"):
    released: bool  # False: the lease had already lapsed


@dataclass(frozen=True)
class ExistsRequest(Message, kind="store_exists"):
    keys: tuple[bytes, ...]


@dataclass(frozen=True)
class ExistsReply(Message, kind="store_exists_reply"):
    present: tuple[bool, ...]


@dataclass(frozen=True)
class DeleteRequest(Message, kind="store_delete"):
    keys: tuple[bytes, ...]


@dataclass(frozen=True)
class DeleteReply(Message, kind="store_delete_reply"):
    deleted: tuple[bool, ...]


@dataclass(frozen=True)
class StatsRequest(Message, kind="store_stats"):
    pass


@dataclass(frozen=True)
class StatsReply(Message, kind="store_stats_reply"):
    """A node's state. ``bytes_used`` counts whole slots; ``slot_bytes`` is 0 until the first put.
    The ``disk_`` fields describe its disk tier (all 0 without one)."""

    node_id: str
    capacity_bytes: int
    slot_bytes: int
    num_slots: int
    num_chunks: int
    num_pinned: int
    bytes_used: int
    hits: int
    misses: int
    num_evicted: int
    disk_capacity_bytes: int = 0
    disk_bytes_used: int = 0
    disk_chunks: int = 0
    disk_hits: int = 0
    disk_evicted: int = 0
    num_replicated: int = 0


# ---- serving: router ⇄ prefill / decode workers ------------------------------------------------
# Every message names its request. Workers never see text.


@dataclass(frozen=True)
class TokenBias:
    """One ``logit_bias`` entry: ``bias`` is added to token ``token_id``'s logit."""

    token_id: int
    bias: float


@dataclass(frozen=True)
class Sampling:
    """How a worker samples a request: the fields of the engine's ``SamplingParams`` as they
    travel (the router validated them; the worker's ``SamplingParams`` validates them again).
    A nested struct on the wire: ``transfer.wire`` checks each field against these annotations.
    ``grammar`` is an llguidance grammar (``router.structured``) the output must match."""

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    max_tokens: int = 16
    seed: int | None = None
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    logprobs: int | None = None
    prompt_logprobs: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    min_p: float = 0.0
    logit_bias: tuple[TokenBias, ...] = ()
    min_tokens: int = 0
    grammar: str | None = None
    n: int = 1  # choices sampled from one prefill (GenerateTask.choice_ids names choices 1..n-1)

    def for_choice(self, index: int) -> Sampling:
        """Choice ``index``'s own sampling: ``n`` 1 and a seed of its own (choice 0 keeps the
        request's), so ``n`` seeded samples differ and each is reproducible alone."""
        seed = self.seed
        if seed is not None and index:
            seed = (seed + index * 0x9E37_79B9_7F4A_7C15) % 2**63
        return dataclasses.replace(self, n=1, seed=seed)


@dataclass(frozen=True)
class TokenLogprob:
    """A token's log-probability and the top alternatives (``top_ids[i]`` has ``top_logprobs[i]``),
    from the model's raw distribution."""

    token_id: int
    logprob: float
    top_ids: tuple[int, ...] = ()
    top_logprobs: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        _check_same_length("token_logprob", "top_ids", self.top_ids, "top_logprobs", self.top_logprobs)


@dataclass(frozen=True)
class GenerateTask(Message, kind="generate_task", version=4):
    """Router → prefill worker: prefill ``token_ids`` and sample the first token.

    ``decode_address`` is the chosen decode worker's inbox; the prefill worker hands the KV over
    there. None means decode here too (a colocated worker). Events go to ``reply_to``.
    """

    request_id: str
    token_ids: tuple[int, ...]
    sampling: Sampling
    reply_to: str
    decode_address: str | None
    choice_ids: tuple[str, ...] = ()  # with sampling.n > 1: the request ids of choices 1..n-1

    def __post_init__(self) -> None:
        if len(self.choice_ids) != self.sampling.n - 1:
            raise ValueError(f"{self.KIND}: n = {self.sampling.n} needs {self.sampling.n - 1} choice_ids")


@dataclass(frozen=True)
class HandoffChoice:
    """Another choice of a prefilled prompt: its request id and the first token prefill sampled."""

    request_id: str
    first_token: int


@dataclass(frozen=True)
class KVLayers(Message, kind="kv_layers"):
    """Prefill → decode worker, ahead of a ``DecodeTask``: layers ``first_layer`` onwards of a
    prompt's KV, sent as soon as the prefill has computed them (layer-wise hand-off: the transfer
    runs while the later layers compute). ``buffers[0]``: ``[layers, 2, kv_heads, pages, page_size,
    head_dim]``, as many layers as it holds."""

    request_id: str
    first_layer: int
    buffers: tuple[Buffer, ...]

    def __post_init__(self) -> None:
        if len(self.buffers) != 1:
            raise ValueError(f"{self.KIND}: expected exactly one KV buffer, got {len(self.buffers)}")
        if self.first_layer < 0:
            raise ValueError(f"{self.KIND}: first_layer must be >= 0, got {self.first_layer}")


@dataclass(frozen=True)
class DecodeTask(Message, kind="decode_task", version=5):
    """Prefill → decode worker: continue a prefilled request.

    The KV of the first ``len(token_ids)`` tokens as packed pages ``[layers, 2, kv_heads, pages,
    page_size, head_dim]``: in ``buffers[0]``, or, when ``streamed_layers`` > 0, already sent as
    ``KVLayers`` messages covering layers ``0 .. streamed_layers - 1`` (then ``buffers`` is empty;
    a layer that did not arrive fails the request, never runs it). ``first_token`` was sampled by
    prefill. ``siblings``: the request's other choices still to decode (``n`` > 1), sharing the
    prompt's KV; each samples with ``sampling.for_choice(i)`` for its index i.
    """

    request_id: str
    token_ids: tuple[int, ...]
    first_token: int
    sampling: Sampling
    reply_to: str
    buffers: tuple[Buffer, ...]
    siblings: tuple[HandoffChoice, ...] = ()
    sibling_indices: tuple[int, ...] = ()  # each sibling's choice index (request_id's is ``index``)
    index: int = 0
    streamed_layers: int = 0

    def __post_init__(self) -> None:
        want = 0 if self.streamed_layers else 1
        if self.streamed_layers < 0 or len(self.buffers) != want:
            raise ValueError(
                f"{self.KIND}: expected {want} KV buffer(s) with streamed_layers={self.streamed_layers}, "
                f"got {len(self.buffers)}"
            )
        _check_same_length(self.KIND, "siblings", self.siblings, "sibling_indices", self.sibling_indices)


@dataclass(frozen=True)
class AbortTask(Message, kind="abort_task"):
    """Router → worker: drop this request wherever it is and free its pages."""

    request_id: str


@dataclass(frozen=True)
class TokenEvent(Message, kind="token_event", version=2):
    """Worker → router: new tokens of a request; ``finish_reason`` set on the last event.

    The prefill worker's event carries the first token and the prompt's cache hits
    (``num_cached_local`` from its own pages, ``num_cached_store`` fetched from a store node).
    """

    request_id: str
    worker_id: str
    token_ids: tuple[int, ...]
    finish_reason: str | None
    num_cached_local: int = 0
    num_cached_store: int = 0
    logprobs: tuple[TokenLogprob, ...] = ()  # one per token in token_ids, when the request asked
    prompt_logprobs: tuple[TokenLogprob, ...] = ()  # the first event's: prompt tokens 1.. (not 0)


@dataclass(frozen=True)
class RequestFailed(Message, kind="request_failed"):
    """Worker → router: the request cannot complete. ``code`` is BAD_REQUEST, UNAVAILABLE, DRAINING
    or INTERNAL."""

    request_id: str
    worker_id: str
    code: str
    message: str
