"""The conductor is pure: importing all of it loads no torch, triton, redis, fastapi nor zmq."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
CONDUCTOR = ROOT / "router" / "conductor"


def test_the_conductor_imports_nothing_heavy():
    modules = [
        "router.conductor",
        *(f"router.conductor.{p.stem}" for p in sorted(CONDUCTOR.glob("[!_]*.py"))),
    ]
    code = f"import sys, {', '.join(modules)}\nprint(' '.join(sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    loaded = {name.split(".")[0] for name in out.stdout.split()}
    assert len(modules) >= 6  # the package and its types, config, costs, policies, pending
    assert not {"torch", "triton", "redis", "fastapi", "zmq"} & loaded
