#!/usr/bin/env bash
# Run the ExLlama GPU tests on a CUDA machine and print load time, tokens/s and GPU memory.
#
# Usage (from the repository root, in the environment llama-api runs in):
#   bash plugins/exllama/scripts/gpu_check.sh            # install what is missing, then test
#   SKIP_INSTALL=1 bash plugins/exllama/scripts/gpu_check.sh
# Environment:
#   PYTHON            python to use (default: .venv/bin/python if present, else python3)
#   TORCH_INDEX_URL   where to get a CUDA torch if the current one is CPU-only
#                     (e.g. https://download.pytorch.org/whl/cu128)
#   EXTRAS            which libraries to install: "v2,v3" (default), "v2" or "v3"
#   PYTEST_ARGS       extra pytest arguments (e.g. "-k exllamav3")
set -uo pipefail

cd "$(dirname "$0")/../../.."
ROOT=$(pwd)
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x "$ROOT/.venv/bin/python" ]]; then PYTHON="$ROOT/.venv/bin/python"; else PYTHON=python3; fi
fi
EXTRAS=${EXTRAS:-v2,v3}
REPORT=$(mktemp -t exllama-gpu-report.XXXXXX.jsonl)
export EXLLAMA_GPU_REPORT="$REPORT"

echo "== GPU"
nvidia-smi --query-gpu=name,memory.total,memory.used,driver_version --format=csv,noheader || {
  echo "nvidia-smi failed: this machine has no usable NVIDIA GPU"; exit 2; }

echo "== torch"
if ! "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  if [[ -n "${TORCH_INDEX_URL:-}" && -z "${SKIP_INSTALL:-}" ]]; then
    "$PYTHON" -m pip install --upgrade torch --index-url "$TORCH_INDEX_URL" || exit 2
  else
    echo "torch does not see CUDA. Install a CUDA build first, e.g."
    echo "  $PYTHON -m pip install torch --index-url https://download.pytorch.org/whl/cu128"
    echo "or rerun with TORCH_INDEX_URL=... set."
    exit 2
  fi
fi
"$PYTHON" -c "import torch; print('torch', torch.__version__, 'CUDA', torch.version.cuda, torch.cuda.get_device_name(0))"

if [[ -z "${SKIP_INSTALL:-}" ]]; then
  echo "== install (plugin + [$EXTRAS], transformers for the tiny test model)"
  "$PYTHON" -m pip install -e core -e "plugins/exllama[$EXTRAS]" transformers pytest anyio || exit 2
fi

echo "== first import (compiles the CUDA kernels the first time: minutes)"
for lib in exllamav2 exllamav3; do
  "$PYTHON" - "$lib" <<'EOF'
import importlib, sys, time
lib = sys.argv[1]
if importlib.util.find_spec(lib) is None:
    print(f"{lib}: not installed")
    sys.exit(0)
started = time.perf_counter()
try:
    module = importlib.import_module(lib)
except Exception as exc:
    print(f"{lib}: import FAILED after {time.perf_counter() - started:.1f}s: {type(exc).__name__}: {exc}")
    sys.exit(0)
print(f"{lib}: imported in {time.perf_counter() - started:.1f}s")
EOF
done
"$PYTHON" -c "import importlib.util as u; print('flash_attn:', 'installed' if u.find_spec('flash_attn') else 'not installed (exllamav2 runs one request at a time)')"

echo "== GPU tests"
started=$(date +%s)
"$PYTHON" -m pytest -q -s -rs --import-mode=importlib -m gpu plugins/exllama/tests/test_exllama_gpu.py ${PYTEST_ARGS:-}
status=$?
echo "== GPU tests finished in $(( $(date +%s) - started ))s with status $status"

echo "== numbers"
"$PYTHON" - "$REPORT" <<'EOF'
import json, sys
mb = lambda b: f"{b / 2**20:8.1f} MiB"
rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
if not rows:
    print("no numbers recorded (tests skipped or failed before measuring)")
for r in rows:
    if r["test"] == "exl3-conversion":
        print(f"exl3 conversion: {r['convert_seconds']} s, {r['bits']} bits")
        continue
    print(f"{r['library']} ({r['test']}): load {r['load_seconds']} s", end="")
    if "single_stream_tok_s" in r:
        print(f", 1 stream {r['single_stream_tok_s']} tok/s, 4 streams {r['four_streams_aggregate_tok_s']} tok/s", end="")
    print()
    for kind in ("torch_allocated_bytes", "device_used_bytes"):
        if kind in r:
            m = r[kind]
            print(f"  {kind:22} before load {mb(m['before_load'])} | after load {mb(m['after_load'])}"
                  f" | after unload {mb(m['after_unload'])}")
EOF
exit $status
