#!/usr/bin/env bash
# llama.cpp on this machine's CPU, the peer of mil-bench: prompt (pp512), generation (tg128) and
# chat-prompt speed, peak memory and time to first token of SmolLM2-135M-Instruct Q4_1, measured by
# scripts/llamacpp_cpu_peer.py through the llama-cpp-python binding.
#
# Kept out of CI: the first run builds llama.cpp from source (about 6 minutes on 2 cores). The
# build lives in a virtual environment under the user's cache folder and is reused while it holds
# the pinned version.
#
#   scripts/llamacpp_cpu_peer.sh                          (2 threads, 3 runs, the default JSON path)
#   scripts/llamacpp_cpu_peer.sh --threads 2 --reps 5 --out /tmp/peer.json
#   scripts/llamacpp_cpu_peer.sh --setup-only             (build or check the venv, measure nothing)
#
# Every argument but --setup-only goes to the .py (see its --help). Environment:
#   MIL_LLAMACPP_VENV   the virtual environment
#                       (default: ${XDG_CACHE_HOME:-~/.cache}/mil/llamacpp-venv)
#   PYTHON              the interpreter that creates it (default: python3)
set -euo pipefail

LLAMA_CPP_PYTHON_VERSION=0.3.36  # vendors llama.cpp 0c1e57098 (its CHANGELOG)
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/mil"
VENV="${MIL_LLAMACPP_VENV:-$CACHE/llamacpp-venv}"
PYTHON="${PYTHON:-python3}"
BUILD_INFO="$VENV/mil-build-info.json"  # how and how long the build took, for the .py's report

log() { echo "[llamacpp_cpu_peer] $*" >&2; }

setup_only=0
args=()
for a in "$@"; do
  if [[ "$a" == --setup-only ]]; then setup_only=1; else args+=("$a"); fi
done

installed_version() {
  [[ -x "$VENV/bin/python" ]] || return 0
  "$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("llama-cpp-python"))' \
    2>/dev/null || true
}

# Compiler, cmake and venv from Debian when any is missing (as root, as on the project's machines).
ensure_build_tools() {
  local missing=0
  command -v cc >/dev/null && command -v c++ >/dev/null && command -v make >/dev/null || missing=1
  command -v cmake >/dev/null || missing=1
  "$PYTHON" -m venv --help >/dev/null 2>&1 || missing=1
  (( missing )) || return 0
  log "installing build-essential cmake python3-venv with apt-get"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq build-essential cmake python3-venv >/dev/null
}

build_venv() {
  ensure_build_tools
  log "building llama-cpp-python $LLAMA_CPP_PYTHON_VERSION in $VENV" \
    "(minutes; log: $CACHE/llamacpp-build.log)"
  rm -rf "$VENV"
  mkdir -p "$CACHE"
  "$PYTHON" -m venv "$VENV"
  # CPU only, tuned for this machine's instruction set; no multimodal (llava/mtmd) library.
  local cmake_args="-DGGML_NATIVE=ON -DGGML_CUDA=OFF -DGGML_VULKAN=OFF -DGGML_METAL=OFF"
  cmake_args+=" -DGGML_BLAS=OFF -DLLAVA_BUILD=OFF"
  local start end
  start=$(date +%s)
  if ! CMAKE_ARGS="$cmake_args" CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" \
      "$VENV/bin/python" -m pip install --no-cache-dir --no-binary llama-cpp-python -v \
      "llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION" >"$CACHE/llamacpp-build.log" 2>&1; then
    tail -n 40 "$CACHE/llamacpp-build.log" >&2
    log "build failed; full log: $CACHE/llamacpp-build.log"
    rm -rf "$VENV"  # no half-built venv for the next run to trust
    exit 1
  fi
  end=$(date +%s)
  local fmt='{"llama_cpp_python": "%s", "cmake_args": "%s", "build_seconds": %d, '
  fmt+='"built_at": "%s", "cores": %d}\n'
  printf "$fmt" "$LLAMA_CPP_PYTHON_VERSION" "$cmake_args" "$((end - start))" "$(date -u +%Y-%m-%dT%H:%M:%SZ)" \
    "$(nproc)" >"$BUILD_INFO"
  log "built in $((end - start)) s"
}

if [[ "$(installed_version)" == "$LLAMA_CPP_PYTHON_VERSION" ]]; then
  log "reusing $VENV (llama-cpp-python $LLAMA_CPP_PYTHON_VERSION)"
else
  build_venv
fi
(( setup_only )) && exit 0

exec "$VENV/bin/python" "$ROOT/scripts/llamacpp_cpu_peer.py" --build-info "$BUILD_INFO" "${args[@]}"
