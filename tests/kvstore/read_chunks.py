"""Another process reading chunks back: prints one JSON line per key (dtype, shape, sha256).

python -m tests.kvstore.read_chunks REDIS_URL KEY_HEX...
"""

from __future__ import annotations

import hashlib
import json
import sys

import torch

from kvstore import StoreClient


def describe(tensor: torch.Tensor) -> dict:
    """What must survive the round trip: dtype, shape and every byte."""
    raw = tensor.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
    return {
        "dtype": str(tensor.dtype).removeprefix("torch."),
        "shape": list(tensor.shape),
        "sha256": hashlib.sha256(raw).hexdigest(),
    }


if __name__ == "__main__":
    url, *hex_keys = sys.argv[1:]
    with StoreClient(redis_url=url) as client:
        for tensor in client.get([bytes.fromhex(k) for k in hex_keys]):
            print(json.dumps(describe(tensor)))
