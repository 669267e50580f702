"""Byte sizes as people write them on command lines (``4GiB``, ``512MiB``): no other imports, so
that any CLI can take them without loading the store."""

from __future__ import annotations

import argparse
import re

_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}


def parse_bytes(text: str) -> int:
    """``"4GiB"`` → 4294967296; plain integers and KB/MB/GB/KiB/MiB/GiB suffixes are accepted."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", text)
    if match is None or match.group(2).upper() not in _UNITS:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (examples: 1073741824, 512MiB, 4GiB)")
    return int(float(match.group(1)) * _UNITS[match.group(2).upper()])
