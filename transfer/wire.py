"""Message ⇄ frames: a MessagePack header frame followed by one raw frame per buffer.

Header (a MessagePack map)::

    {"kind": str, "version": int, "id": int | None, "seq": int | None,
     "fields": {name: value, ...},
     "buffers": [[dtype, shape, frame_index, checksum], ...]}

``id`` correlates a reply with its request and ``seq`` orders the items of a stream; both belong
to the socket pattern, not to the message. Buffer ``i`` travels in frame ``i + 1`` with the xxh3-64
checksum its producer computed (``Buffer.checksum``). Nothing is pickled, and ``decode`` trusts
nothing: every deviation raises ``WireError`` naming it, bytes that do not match their checksum
``CorruptBuffer``. With a cluster key the header frame (checksums included) is sealed with a MAC
(``transfer.auth``).
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import msgpack
import xxhash

from transfer import auth
from transfer.errors import CorruptBuffer, WireError
from transfer.messages import DTYPE_ITEMSIZE, MESSAGE_TYPES, Buffer, Message

_HEADER_KEYS = frozenset({"kind", "version", "id", "seq", "fields", "buffers"})


@dataclass(frozen=True)
class Envelope:
    """A decoded message with the pattern-level ids that travelled with it."""

    message: Message
    msg_id: int | None = None
    seq: int | None = None


def encode(message: Message, *, msg_id: int | None = None, seq: int | None = None) -> list[Any]:
    """Frames for ``message``: the header bytes, then each buffer's data object (not copied)."""
    buffers: tuple[Buffer, ...] = getattr(message, "buffers", ())
    fields = {
        f.name: _plain(getattr(message, f.name)) for f in dataclasses.fields(message) if f.name != "buffers"
    }
    header = {
        "kind": message.KIND,
        "version": message.VERSION,
        "id": msg_id,
        "seq": seq,
        "fields": fields,
        "buffers": [[b.dtype, list(b.shape), i + 1, checksum(b)] for i, b in enumerate(buffers)],
    }
    return [auth.seal(msgpack.packb(header, use_bin_type=True)), *(b.data for b in buffers)]


def checksum(buffer: Buffer) -> int:
    """The buffer's checksum: its producer's if it carries one, else ``digest`` of its bytes."""
    return buffer.checksum if buffer.checksum is not None else digest(buffer.data)


def digest(data: Any) -> int:
    """The checksum of a buffer's bytes, as producers compute it and readers check it: xxh3-64
    (tens of GB/s: a few ms for a long prompt's KV)."""
    return xxhash.xxh3_64_intdigest(data)


def _plain(value: Any) -> Any:
    """A field as MessagePack carries it: a nested struct (dataclass) becomes a map of its fields,
    a tuple of structs a list of maps."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (tuple, list)) and value and dataclasses.is_dataclass(value[0]):
        return [_plain(v) for v in value]
    return value


def decode(frames: Sequence[Any], *, verify: bool = True) -> Envelope:
    """Rebuild a message from frames (bytes or ``zmq.Frame``); buffers are views, not copies.

    ``verify=False`` skips hashing the buffers (everything else is still checked): for a receiver
    that only keeps the bytes, with their checksum, for a reader that checks them (a store node).

    Raises ``WireError`` for: no frames, a header that is not a MessagePack map with exactly the
    expected keys, an unknown kind, a version other than the one this process speaks, missing or
    unexpected fields, a field of the wrong type, a frame count that differs from the header's
    buffer list, a buffer whose frame size does not match its dtype and shape, or a violated
    message invariant.
    """
    if not frames:
        raise WireError("empty message: expected a header frame")
    header_frame = auth.unseal(memoryview(frames[0]))
    try:
        header = msgpack.unpackb(header_frame, raw=False)
    except Exception as e:  # msgpack raises several unrelated types for garbage input
        raise WireError(f"header frame is not valid MessagePack: {e}") from None
    if not isinstance(header, dict):
        raise WireError(f"header must be a map, got {type(header).__name__}")
    msg_id = header.get("id") if isinstance(header.get("id"), int) else None
    try:
        return _decode_header(header, frames, msg_id, verify)
    except CorruptBuffer:
        raise
    except WireError as e:
        raise WireError(str(e), msg_id) from None


def _decode_header(header: dict, frames: Sequence[Any], msg_id: int | None, verify: bool) -> Envelope:
    cls = _message_class(header)
    kind = cls.KIND
    fields = header["fields"]
    if not isinstance(fields, dict):
        raise WireError(f"{kind}: fields must be a map, got {type(fields).__name__}")
    hints = {name: tp for name, tp in _field_types(cls).items() if name != "buffers"}
    values = _field_values(fields, hints, kind)
    buffers = _buffers(kind, header["buffers"], frames)
    if "buffers" in _field_types(cls):
        values["buffers"] = buffers
    elif buffers:
        raise WireError(f"{kind}: carries no buffers, got {len(buffers)}")
    try:
        message = cls(**values)
    except ValueError as e:
        raise WireError(str(e)) from None
    for i, buffer in enumerate(buffers if verify else ()):  # last: a receiver told of corruption can answer
        if digest(buffer.data) != buffer.checksum:
            raise CorruptBuffer(
                f"{kind}.buffers[{i}]: its bytes do not match their checksum", msg_id, message
            )
    return Envelope(message, header["id"], header["seq"])


def _message_class(header: dict) -> type[Message]:
    """The message class a header names, once its keys, kind, version and ids are checked."""
    if set(header) != _HEADER_KEYS:
        missing, extra = sorted(_HEADER_KEYS - set(header)), sorted(set(header) - _HEADER_KEYS)
        raise WireError(f"header keys wrong: missing {missing}, unexpected {extra}")
    kind = header["kind"]
    cls = MESSAGE_TYPES.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise WireError(f"unknown message kind {kind!r}")
    if header["version"] != cls.VERSION:
        raise WireError(
            f"{kind}: version {header['version']!r} not supported (this peer speaks {cls.VERSION})"
        )
    for name in ("id", "seq"):
        _coerce(header[name], int | None, f"header.{name}")
    return cls


def _field_values(fields: dict, hints: dict[str, Any], where: str) -> dict[str, Any]:
    """Exactly the fields ``hints`` names, each checked against its annotation."""
    if set(fields) != set(hints):
        missing, extra = sorted(set(hints) - set(fields)), sorted(set(fields) - set(hints))
        raise WireError(f"{where}: missing fields {missing}, unexpected fields {extra}")
    return {name: _coerce(fields[name], hints[name], f"{where}.{name}") for name in hints}


def _buffers(kind: str, descriptors: Any, frames: Sequence[Any]) -> tuple[Buffer, ...]:
    if not isinstance(descriptors, list):
        raise WireError(f"{kind}: buffers must be a list, got {type(descriptors).__name__}")
    if len(frames) != 1 + len(descriptors):
        raise WireError(
            f"{kind}: frame count mismatch: header describes {len(descriptors)} buffer frames, "
            f"got {len(frames) - 1}"
        )
    return tuple(_buffer(kind, i, d, frames[i + 1]) for i, d in enumerate(descriptors))


def _buffer(kind: str, i: int, descriptor: Any, frame: Any) -> Buffer:
    where = f"{kind}.buffers[{i}]"
    if not (isinstance(descriptor, list) and len(descriptor) == 4):
        raise WireError(
            f"{where}: descriptor must be [dtype, shape, frame_index, checksum], got {descriptor!r}"
        )
    dtype, shape, frame_index, sum_ = descriptor
    _coerce(sum_, int, f"{where}.checksum")
    if dtype not in DTYPE_ITEMSIZE:
        raise WireError(f"{where}: unknown dtype {dtype!r}")
    shape = _coerce(shape, tuple[int, ...], f"{where}.shape")
    if frame_index != i + 1:
        raise WireError(f"{where}: frame index {frame_index!r}, expected {i + 1}")
    data = memoryview(frame)
    expected = math.prod(shape) * DTYPE_ITEMSIZE[dtype]
    if data.nbytes != expected:
        raise WireError(f"{where}: frame holds {data.nbytes} bytes, {dtype}{list(shape)} needs {expected}")
    try:
        return Buffer(data, dtype, shape, checksum=sum_)
    except ValueError as e:
        raise WireError(f"{where}: {e}") from None


_HINTS: dict[type, dict[str, Any]] = {}


def _field_types(cls: type) -> dict[str, Any]:
    if cls not in _HINTS:
        hints = typing.get_type_hints(cls)
        _HINTS[cls] = {f.name: hints[f.name] for f in dataclasses.fields(cls)}
    return _HINTS[cls]


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """``value`` checked against annotation ``tp``, with MessagePack's lists turned into tuples."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(tp):
            try:
                return _coerce(value, option, where)
            except WireError:
                continue
    elif origin is tuple:
        item_type, ellipsis = typing.get_args(tp)
        assert ellipsis is Ellipsis, f"only tuple[X, ...] is supported, got {tp}"
        if isinstance(value, (list, tuple)):
            return tuple(_coerce(v, item_type, f"{where}[{i}]") for i, v in enumerate(value))
    elif origin is dict:
        key_type, value_type = typing.get_args(tp)
        if isinstance(value, dict):
            return {
                _coerce(k, key_type, f"{where} key"): _coerce(v, value_type, f"{where}[{k!r}]")
                for k, v in value.items()
            }
    elif tp is type(None):
        if value is None:
            return None
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp in (str, bytes, bool):
        if isinstance(value, tp):
            return value
    elif dataclasses.is_dataclass(tp):
        if isinstance(value, dict):
            return _struct(value, tp, where)
    else:
        raise AssertionError(f"{where}: unsupported field annotation {tp!r}")
    raise WireError(f"{where}: expected {_type_name(tp)}, got {type(value).__name__}")


def _struct(value: dict, cls: type, where: str) -> Any:
    """A nested struct from its map: exactly its fields, each of its annotated type."""
    values = _field_values(value, _field_types(cls), where)
    try:
        return cls(**values)
    except ValueError as e:
        raise WireError(f"{where}: {e}") from None


def _type_name(tp: Any) -> str:
    return tp.__name__ if isinstance(tp, type) else str(tp)
