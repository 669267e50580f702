"""Fixtures: a real Redis and store nodes as separate processes, all stopped by PID."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from kvstore.embedded_redis import EmbeddedRedis
from tests.kvstore.procs import TTL_S, NodeProcess


@pytest.fixture
def redis_server() -> Iterator[EmbeddedRedis]:
    server = EmbeddedRedis().start()
    yield server
    server.stop()


@pytest.fixture
def start_node(tmp_path: Path):
    """``start_node(redis_url, node_id, capacity_bytes=..., ...)``: a registered node process."""
    started: list[NodeProcess] = []

    def start(
        redis_url: str,
        node_id: str,
        *,
        capacity_bytes: int = 64 << 20,
        slot_bytes: int = 0,
        chunk_bytes: int = 0,
        ttl_s: float = TTL_S,
        read_lease_s: float = 30.0,
        port: int = 0,
        wait: bool = True,
        disk_path: Path | None = None,
        disk_capacity: int = 1 << 30,
        extra: tuple[str, ...] = (),
    ) -> NodeProcess:
        argv = ["--listen", f"tcp://127.0.0.1:{port}", "--capacity-bytes", str(capacity_bytes)]
        argv += [
            "--slot-bytes",
            str(slot_bytes),
            "--chunk-bytes",
            str(chunk_bytes),
            "--heartbeat-ttl-s",
            str(ttl_s),
            "--read-lease-s",
            str(read_lease_s),
        ]
        if disk_path is not None:
            argv += ["--disk-path", str(disk_path), "--disk-capacity", str(disk_capacity)]
        argv += extra
        node = NodeProcess(redis_url, node_id, argv, tmp_path / f"{node_id}.log")
        started.append(node)
        if wait:
            node.address = node.wait_registered()
        return node

    yield start
    for node in started:
        node.kill()
