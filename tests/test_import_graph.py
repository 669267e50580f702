"""The import graph of DESIGN.md is the architecture: every first-party import must be allowed.

Checked on the source (AST), including imports inside functions, so a lazy import cannot hide an
edge. Rules are per package, and a sub-package or module may have a stricter rule of its own (the
longest matching path wins): the router's conductor and the worker's leaf types stay pure.
``engine`` may use exactly one module of ``kvstore``: the torch-free ``kvstore.keys``.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = (
    "kernels", "engine", "transfer", "kvstore", "worker", "prefill", "decode", "colocated", "router",
    "sim", "cluster", "bench",
)  # fmt: skip
_WORKER_ROLE = {"worker", "engine", "kernels", "kvstore", "transfer"}  # prefill, decode, colocated

# path (a package, sub-package or module) → first-party packages or modules it may import, besides
# itself; the longest path that contains a file decides
ALLOWED: dict[str, set[str]] = {
    "kernels": set(),
    "engine": {"kernels", "kvstore.keys"},
    "transfer": set(),
    "kvstore": {"transfer"},
    "worker": {"engine", "kernels", "kvstore", "transfer"},
    "worker/types.py": set(),  # the router reads it: no engine
    "prefill": _WORKER_ROLE,
    "decode": _WORKER_ROLE,
    "colocated": _WORKER_ROLE,
    "router": {"kvstore", "transfer", "worker.types", "worker.registry"},
    "router/conductor": {"worker.types"},
    "sim": {"router.conductor", "worker.types", "kvstore.keys"},
    "cluster": set(PACKAGES) - {"bench"},  # the composition root
    "bench": set(PACKAGES) - {"cluster"},  # nothing imports cluster or bench
}
# third-party modules a path must not touch (the router, its conductor and the wire stay light)
_HEAVY = {"torch", "triton"}
FORBIDDEN_THIRD_PARTY: dict[str, set[str]] = {
    "router": _HEAVY,
    "router/conductor": _HEAVY | {"redis", "zmq", "fastapi", "starlette", "prometheus_client", "msgpack"},
    "transfer": _HEAVY,
    "worker/types.py": _HEAVY | {"redis", "zmq"},
    "worker/registry.py": _HEAVY,
    "engine/types.py": _HEAVY,
    "sim": _HEAVY | {"redis", "zmq"},
}


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            # "from kvstore import keys" is an edge to kvstore.keys, not to all of kvstore
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def rule_for(rules: dict[str, set[str]], rel: Path) -> set[str]:
    """The rule of the longest path in ``rules`` that is ``rel`` or contains it."""
    matching = [key for key in rules if rel.as_posix() == key or rel.as_posix().startswith(key + "/")]
    return rules[max(matching, key=len)] if matching else set()


def violations(package: str) -> list[str]:
    bad = []
    for path in sorted((ROOT / package).rglob("*.py")):
        rel = path.relative_to(ROOT)
        allowed = rule_for(ALLOWED, rel)
        forbidden = rule_for(FORBIDDEN_THIRD_PARTY, rel)
        for mod in imported_modules(path):
            top = mod.split(".")[0]
            if top in forbidden:
                bad.append(f"{rel} imports {mod}")
            if top not in PACKAGES or top == package:
                continue
            if any(mod == a or mod.startswith(a + ".") for a in allowed):
                continue
            bad.append(f"{rel} imports {mod}")
    return bad


@pytest.mark.parametrize("package", PACKAGES)
def test_imports_follow_the_design(package):
    assert violations(package) == []


def test_the_checker_catches_a_forbidden_edge(tmp_path, monkeypatch):
    (tmp_path / "engine").mkdir()
    (tmp_path / "engine" / "bad.py").write_text(
        "import router.app\nfrom kvstore.client import StoreClient\nfrom kvstore import keys\n"
        "def lazy():\n    import transfer.wire\n"
    )
    (tmp_path / "router" / "conductor").mkdir(parents=True)
    (tmp_path / "router" / "app.py").write_text("import torch\nimport redis\nfrom worker.registry import R\n")
    (tmp_path / "router" / "conductor" / "p.py").write_text("import redis\nfrom worker.registry import R\n")
    for role in ("prefill", "decode", "colocated", "kvstore"):
        (tmp_path / role).mkdir()
    (tmp_path / "prefill" / "w.py").write_text("from decode.worker import DecodeWorker\nimport worker.base\n")
    (tmp_path / "colocated" / "w.py").write_text("import prefill.worker\n")
    (tmp_path / "kvstore" / "n.py").write_text("from worker.types import WorkerInfo\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    assert sorted(violations("engine")) == [
        "engine/bad.py imports kvstore.client.StoreClient",
        "engine/bad.py imports router.app",
        "engine/bad.py imports transfer.wire",
    ]
    assert sorted(violations("router")) == [
        "router/app.py imports torch",
        "router/conductor/p.py imports redis",
        "router/conductor/p.py imports worker.registry.R",
    ]
    assert violations("prefill") == ["prefill/w.py imports decode.worker.DecodeWorker"]
    assert violations("colocated") == ["colocated/w.py imports prefill.worker"]
    assert violations("kvstore") == ["kvstore/n.py imports worker.types.WorkerInfo"]
