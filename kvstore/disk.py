"""A store node's disk tier: chunks the memory tier evicts, kept as plain files under one directory.

One file a chunk, named by its key (``<key hex>.kv``): a fixed preamble (magic, header length), a
msgpack header (dtype, shape, byte count, the producer's checksum) and the chunk's bytes. Why
plain files rather than one large slotted file or an embedded key-value store:

- the directory is the tier's index: a node restarted on the same path lists it and comes back
  warm, with no journal to replay and nothing to repair after a crash but a stray temporary file;
- a write is atomic (written to ``*.tmp``, then renamed), so a crash never leaves a chunk whose
  file looks complete but is not; a read checks the length it was promised and the reader checks
  the producer's checksum (``transfer.wire``), so a file changed at rest is detected too;
- the kernel's page cache keeps hot files in spare memory at no cost to us; chunks are tens of
  KiB to a few MiB, far above the size where a file per entry costs more than the bytes.

Least recently used files are deleted to stay under ``capacity_bytes`` (headers included). Not
thread-safe: the store node's one thread owns it.
"""

from __future__ import annotations

import logging
import os
import struct
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import msgpack

log = logging.getLogger(__name__)

_MAGIC = b"TKV1"
_PREAMBLE = struct.Struct("<4sI")  # magic, header length
_SUFFIX = ".kv"


@dataclass(frozen=True)
class DiskEntry:
    """What the tier knows of a chunk without reading its bytes."""

    nbytes: int
    dtype: str
    shape: tuple[int, ...]
    checksum: int | None
    file_bytes: int  # on disk, header included: what counts against the capacity


class DiskTier:
    """Chunks as files under ``path``, at most ``capacity_bytes`` of them (LRU beyond).

    ``chunk_bytes`` (0: any) is the one chunk size kept: files of another size found at start
    (another model's, or damaged) are deleted, as are temporary files a crash left behind.
    """

    def __init__(self, path: str | os.PathLike, capacity_bytes: int, chunk_bytes: int = 0) -> None:
        if capacity_bytes <= 0:
            raise ValueError(f"disk capacity must be positive, got {capacity_bytes}")
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.capacity_bytes = capacity_bytes
        self.chunk_bytes = chunk_bytes
        self._entries: OrderedDict[bytes, DiskEntry] = OrderedDict()  # least recently used first
        self.bytes_used = 0
        self.hits = 0  # chunks read back (promoted to memory)
        self.num_written = 0
        self.num_evicted = 0  # files deleted to stay under the capacity
        self._dropped: list[bytes] = []
        self._scan()

    # ---- writes ------------------------------------------------------------------------------------

    def write(
        self, key: bytes, data: memoryview, dtype: str, shape: tuple[int, ...], checksum: int | None
    ) -> bool:
        """Keep a copy of ``data`` under ``key`` (touching it if already kept); False if it cannot
        fit at all or the write failed (the chunk is then simply not on disk)."""
        if key in self._entries:
            self._entries.move_to_end(key)
            return True
        header = msgpack.packb(
            {"dtype": dtype, "shape": list(shape), "nbytes": data.nbytes, "checksum": checksum}
        )
        file_bytes = _PREAMBLE.size + len(header) + data.nbytes
        if file_bytes > self.capacity_bytes:
            return False
        while self.bytes_used + file_bytes > self.capacity_bytes:
            self._evict_one()
        final = self._file(key)
        temporary = final.with_suffix(".tmp")
        try:
            with open(temporary, "wb") as f:
                f.write(_PREAMBLE.pack(_MAGIC, len(header)))
                f.write(header)
                f.write(data)
            os.replace(temporary, final)
        except OSError as e:
            log.error("could not write chunk %s to %s: %s", key.hex(), self.path, e)
            temporary.unlink(missing_ok=True)
            return False
        self._add(key, DiskEntry(data.nbytes, dtype, tuple(shape), checksum, file_bytes))
        self.num_written += 1
        return True

    def delete(self, key: bytes) -> bool:
        entry = self._entries.pop(key, None)
        if entry is None:
            return False
        self.bytes_used -= entry.file_bytes
        self._file(key).unlink(missing_ok=True)
        return True

    def take_dropped(self) -> list[bytes]:
        """Keys deleted since the last call to make room (or found unreadable)."""
        dropped, self._dropped = self._dropped, []
        return dropped

    # ---- reads -------------------------------------------------------------------------------------

    def entry(self, key: bytes) -> DiskEntry | None:
        return self._entries.get(key)

    def contains(self, key: bytes) -> bool:
        return key in self._entries

    def read_into(self, key: bytes, out: memoryview) -> bool:
        """Copy the chunk's bytes into ``out`` (exactly its size); False, and the file is dropped,
        if it is missing or shorter than its header promised."""
        entry = self._entries[key]
        assert out.nbytes == entry.nbytes, f"{out.nbytes}-byte buffer for a {entry.nbytes}-byte chunk"
        try:
            with open(self._file(key), "rb", buffering=0) as f:
                f.seek(entry.file_bytes - entry.nbytes)
                got = f.readinto(out)
        except OSError as e:
            got, reason = 0, str(e)
        else:
            reason = f"{got} of {entry.nbytes} bytes"
        if got != entry.nbytes:
            log.error("dropping unreadable chunk file %s: %s", self._file(key), reason)
            self.delete(key)
            self._dropped.append(key)
            return False
        self._entries.move_to_end(key)
        self.hits += 1
        return True

    def stored_keys(self) -> list[bytes]:
        """Every chunk kept, least recently used first."""
        return list(self._entries)

    @property
    def num_chunks(self) -> int:
        return len(self._entries)

    # ---- internals ---------------------------------------------------------------------------------

    def _file(self, key: bytes) -> Path:
        return self.path / f"{key.hex()}{_SUFFIX}"

    def _add(self, key: bytes, entry: DiskEntry) -> None:
        self._entries[key] = entry
        self.bytes_used += entry.file_bytes

    def _evict_one(self) -> None:
        key = next(iter(self._entries))
        self.delete(key)
        self._dropped.append(key)
        self.num_evicted += 1

    def _scan(self) -> None:
        """Adopt the chunk files a previous run left (oldest first, so LRU order survives)."""
        for stray in self.path.glob("*.tmp"):
            stray.unlink(missing_ok=True)
        found = []
        for file in self.path.glob(f"*{_SUFFIX}"):
            parsed = self._parse(file)
            if parsed is None:
                log.warning("deleting unusable chunk file %s", file)
                file.unlink(missing_ok=True)
            else:
                found.append((file.stat().st_mtime_ns, *parsed))
        for _, key, entry in sorted(found, key=lambda item: item[0]):
            self._add(key, entry)
        while self.bytes_used > self.capacity_bytes:
            self._evict_one()
        self._dropped.clear()  # never published: nothing to retract
        if found:
            log.info(
                "disk tier %s: adopted %d chunks (%d bytes)", self.path, len(self._entries), self.bytes_used
            )

    def _parse(self, file: Path) -> tuple[bytes, DiskEntry] | None:
        try:
            key = bytes.fromhex(file.name[: -len(_SUFFIX)])
            with open(file, "rb") as f:
                magic, header_len = _PREAMBLE.unpack(f.read(_PREAMBLE.size))
                header = msgpack.unpackb(f.read(header_len)) if magic == _MAGIC else None
            size = file.stat().st_size
        except (OSError, ValueError, struct.error, msgpack.UnpackException):
            return None
        if not key or not isinstance(header, dict):
            return None
        nbytes = header.get("nbytes")
        if not isinstance(nbytes, int) or size != _PREAMBLE.size + header_len + nbytes:
            return None  # truncated (or padded) since it was written
        if self.chunk_bytes and nbytes != self.chunk_bytes:
            return None
        entry = DiskEntry(
            nbytes, str(header.get("dtype")), tuple(header.get("shape", ())), header.get("checksum"), size
        )
        return key, entry
