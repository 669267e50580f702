"""Shared memory on one host: the transport of a store node's arena to clients beside it.

The owner creates the region as an anonymous file (``SharedRegion.create``: ``memfd``) whose first
bytes are a random token; another process maps it through the owner's ``/proc/<pid>/fd/<fd>``
path, and has the owner's region only if it finds the token there (``SharedRegion.attach``; on
another host or in another container the path names nothing, or something else, and the caller
keeps to its socket). Bytes are copied in and out with ``write`` / ``read_into``; what they mean,
and who may touch which bytes when, is the owner's protocol (``kvstore``: slots pinned by leases,
chunks checked against their producer's checksum by the reader).
"""

from __future__ import annotations

import logging
import mmap
import os
import secrets
import stat
from typing import Any

log = logging.getLogger(__name__)

TOKEN_BYTES = 16


class SharedRegion:
    """A mapped region; ``token`` names it, ``path`` is where others attach (owner only)."""

    def __init__(self, memory: mmap.mmap, token: bytes, path: str | None = None) -> None:
        self._memory = memory
        self._view = memoryview(memory)
        self.token = token
        self.path = path
        self.size = len(memory)

    @classmethod
    def create(cls, size: int) -> SharedRegion | None:
        """A new region of ``size`` bytes (committed now), its token in the first ``TOKEN_BYTES``;
        None where memfd is not available (not Linux)."""
        if not hasattr(os, "memfd_create"):
            return None
        fd = os.memfd_create("tandem-shared", os.MFD_CLOEXEC)
        try:
            os.ftruncate(fd, size)
            memory = mmap.mmap(fd, size, flags=mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0))
        except BaseException:
            os.close(fd)
            raise
        # the descriptor stays open for the process's lifetime: others open the region through it
        token = secrets.token_bytes(TOKEN_BYTES)
        memory[:TOKEN_BYTES] = token
        return cls(memory, token, f"/proc/{os.getpid()}/fd/{fd}")

    @classmethod
    def attach(cls, path: str, token: bytes, size: int) -> SharedRegion | None:
        """Map the region an owner announced; None if this process cannot (not on its host)."""
        if not path or len(token) != TOKEN_BYTES or size <= TOKEN_BYTES:
            return None
        try:
            # Only a regular file of the announced size is opened: on another host or in another
            # container the path may name some other process's descriptor (a socket, a device).
            st = os.stat(path)
            if not stat.S_ISREG(st.st_mode) or st.st_size != size:
                return None
            fd = os.open(path, os.O_RDWR)
        except OSError as e:
            log.debug("cannot open %s (%s): not the owner's host", path, e)
            return None
        try:
            if os.pread(fd, TOKEN_BYTES, 0) != token:  # checked before the whole region is mapped
                return None
            memory = mmap.mmap(fd, size, flags=mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0))
        except (OSError, ValueError):
            return None
        finally:
            os.close(fd)  # the mapping keeps the file
        return cls(memory, token)

    def view(self, offset: int, nbytes: int) -> memoryview:
        """``nbytes`` at ``offset``, in place (never the token's bytes)."""
        if not TOKEN_BYTES <= offset <= offset + nbytes <= self.size:
            raise ValueError(f"{nbytes} bytes at {offset} lie outside the {self.size}-byte region")
        return self._view[offset : offset + nbytes]

    def write(self, offset: int, data: Any) -> None:
        """Copy ``data`` (any C-contiguous buffer) to ``offset``."""
        source = memoryview(data).cast("B")
        self.view(offset, source.nbytes)[:] = source

    def read_into(self, offset: int, out: Any) -> None:
        """Copy the region's bytes at ``offset`` into ``out`` (a writable buffer, filled whole)."""
        target = memoryview(out).cast("B")
        target[:] = self.view(offset, target.nbytes)

    def close(self) -> None:
        self._view.release()
        self._memory.close()
