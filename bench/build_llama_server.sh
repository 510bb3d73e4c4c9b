#!/usr/bin/env bash
# Builds llama.cpp's own `llama-server` for the benchmark suite, from the llama.cpp tree
# that the llama-cpp-python source distribution carries (the same version the llama.cpp
# plugin runs). The build lives in a cache folder outside the repository: never commit it.
# Idempotent: a finished build is reused; an interrupted one resumes.
# Prints the binary's path on its last line (stdout); everything else goes to stderr.
set -euo pipefail

VERSION="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
CACHE="${LLAMA_API_BENCH_CACHE:-$HOME/.cache/llama-api-bench}"
JOBS="${BUILD_JOBS:-2}"
PYTHON="${PYTHON:-python3}"
SRC="$CACHE/llama-cpp-python-$VERSION"
BUILD="$CACHE/build-$VERSION"
BIN="$BUILD/bin/llama-server"

if [ -x "$BIN" ] && [ -f "$BUILD/.done" ]; then
  echo "$BIN"
  exit 0
fi

mkdir -p "$CACHE"
exec 9>"$CACHE/build.lock"
flock 9  # one build at a time; a second caller waits, then finds it done
if [ -x "$BIN" ] && [ -f "$BUILD/.done" ]; then
  echo "$BIN"
  exit 0
fi
{
if [ ! -d "$SRC/vendor/llama.cpp" ]; then
  "$PYTHON" -m pip download --disable-pip-version-check --no-deps --no-binary llama-cpp-python \
    -d "$CACHE" "llama-cpp-python==$VERSION"
  tar -xzf "$CACHE/llama_cpp_python-$VERSION.tar.gz" -C "$CACHE"
  # The sdist unpacks as llama_cpp_python-<v>; keep one stable name.
  [ -d "$CACHE/llama_cpp_python-$VERSION" ] && mv "$CACHE/llama_cpp_python-$VERSION" "$SRC"
fi

# As llama-cpp-python is built (the Makefile): native, without AMX on x86, which some VMs
# report but fault on.
NO_AMX=""
[ "$(uname -m)" = x86_64 ] && NO_AMX="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
if [ ! -f "$BUILD/CMakeCache.txt" ]; then
  cmake -S "$SRC/vendor/llama.cpp" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release \
    -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_TESTS=OFF \
    -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_UI=OFF -DBUILD_SHARED_LIBS=OFF \
    -DCMAKE_C_FLAGS="$NO_AMX" -DCMAKE_CXX_FLAGS="$NO_AMX"
fi
nice -n 19 cmake --build "$BUILD" --target llama-server -j"$JOBS"
} >&2
touch "$BUILD/.done"
echo "$BIN"
