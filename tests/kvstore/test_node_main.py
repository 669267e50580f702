"""The ``tandem serve store`` command line: help, sizes, and refusals that say how to fix them."""

from __future__ import annotations

import argparse

import pytest

from kvstore.config import StoreNodeConfig
from kvstore.node_main import main, parse_bytes


def test_help_lists_every_flag(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--redis-url", "--listen", "--capacity-bytes", "--node-id", "--slot-bytes", "--heartbeat-ttl-s",
                 "--advertise", "--read-lease-s", "--evict-watermark", "--max-frame-bytes"):  # fmt: skip
        assert flag in out


def test_sizes_accept_units():
    assert parse_bytes("1048576") == 1 << 20
    assert parse_bytes("512MiB") == 512 << 20
    assert parse_bytes("4 GiB") == 4 << 30
    assert parse_bytes("1.5kb") == 1500
    with pytest.raises(argparse.ArgumentTypeError, match="not a size: '4 parsecs'"):
        parse_bytes("4 parsecs")


BASE = {"--redis-url": "redis://127.0.0.1:1", "--listen": "tcp://127.0.0.1:5600", "--capacity-bytes": "1MiB"}


@pytest.mark.parametrize(
    "overrides, problem",
    [
        ({"--capacity-bytes": "0"}, "capacity_bytes must be positive"),
        ({"--listen": "tcp://0.0.0.0:5600", "--node-id": "n"}, "needs advertise="),
        ({"--listen": "tcp://127.0.0.1:0"}, "--node-id is required"),
        ({"--listen": "localhost:5600", "--node-id": "n"}, "must be a ZeroMQ address"),
        ({"--node-id": "n", "--chunk-bytes": "4KiB", "--slot-bytes": "8KiB"}, "equal slot_bytes"),
    ],
)
def test_bad_arguments_exit_with_the_fix(overrides, problem, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([item for pair in (BASE | overrides).items() for item in pair])
    assert exit_.value.code == 2
    assert problem in capsys.readouterr().err


def test_config_is_frozen_and_derives_the_heartbeat_interval():
    config = StoreNodeConfig("n", "tcp://127.0.0.1:0", "redis://x", 1 << 20, heartbeat_ttl_s=3.0)
    assert config.heartbeat_interval_s == 1.0
    with pytest.raises(AttributeError):
        config.capacity_bytes = 1  # type: ignore[misc]
    with pytest.raises(ValueError, match="slot_bytes must be in"):
        StoreNodeConfig("n", "tcp://127.0.0.1:0", "redis://x", 1 << 20, slot_bytes=2 << 20)
