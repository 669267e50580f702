"""The import graph of DESIGN.md is the architecture: every first-party import must be allowed.

Checked on the source (AST), including imports inside functions, so a lazy import cannot hide an
edge. ``engine`` may use exactly one module of ``kvstore``: the torch-free ``kvstore.keys``.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("kernels", "engine", "transfer", "kvstore", "prefill", "decode", "router", "cluster", "bench")

# package → first-party packages (or single modules) it may import, besides itself
ALLOWED: dict[str, set[str]] = {
    "kernels": set(),
    "engine": {"kernels", "kvstore.keys"},
    "transfer": set(),
    "kvstore": {"transfer"},
    "prefill": {"engine", "kernels", "kvstore", "transfer"},
    "decode": {"engine", "kernels", "kvstore", "transfer"},
    "router": {"kvstore", "transfer"},
    "cluster": set(PACKAGES) - {"bench"},  # the composition root
    "bench": set(PACKAGES) - {"cluster"},  # nothing imports cluster or bench
}
# third-party modules a package must not touch (the router and the wire stay torch-free)
FORBIDDEN_THIRD_PARTY = {"router": {"torch", "triton"}, "transfer": {"torch", "triton"}}


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


def violations(package: str) -> list[str]:
    bad = []
    allowed = ALLOWED[package]
    for path in sorted((ROOT / package).rglob("*.py")):
        for mod in imported_modules(path):
            top = mod.split(".")[0]
            rel = path.relative_to(ROOT)
            if top in FORBIDDEN_THIRD_PARTY.get(package, ()):
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
    (tmp_path / "router").mkdir()
    (tmp_path / "router" / "app.py").write_text("import torch\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    assert sorted(violations("engine")) == [
        "engine/bad.py imports kvstore.client.StoreClient",
        "engine/bad.py imports router.app",
        "engine/bad.py imports transfer.wire",
    ]
    assert violations("router") == ["router/app.py imports torch"]
