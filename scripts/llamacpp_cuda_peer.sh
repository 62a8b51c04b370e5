#!/usr/bin/env bash
# The GPU peer of mil-bench: llama.cpp's llama-bench built with CUDA from the sources vendored in
# the llama-cpp-python sdist (PyPI; 0.3.36 for the figures in docs/PERFORMANCE.md), run on the
# teacher GGUF file with every layer on the GPU. Run it on the GPU machine in the same sitting as
# `mil-bench --device cuda -p 512 -n 128`.
#
#   scripts/llamacpp_cuda_peer.sh LLAMA_CPP_DIR [OUT_JSON]
#     LLAMA_CPP_DIR  the sdist's vendor/llama.cpp folder (its ggml/ and tools/llama-bench/ suffice)
#     OUT_JSON       llama-bench's JSON output (default out/llamacpp-cuda-bench.json)
# Environment: CUDA_ARCH (default 90), LCP_BUILD (build folder, default /tmp/llamacpp-cuda; a
# second run reuses it), LCP_BUILD_TIMEOUT (seconds, default 500: the CUDA build takes about
# 4 minutes on 16 cores).
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
src=${1:?usage: llamacpp_cuda_peer.sh LLAMA_CPP_DIR [OUT_JSON]}
out=${2:-$repo/out/llamacpp-cuda-bench.json}
build=${LCP_BUILD:-/tmp/llamacpp-cuda}
model=$repo/models/SmolLM2-135M-Instruct.Q4_1.gguf
[[ -f $src/CMakeLists.txt ]] || { echo "no llama.cpp sources in '$src'" >&2; exit 2; }
[[ -f $model ]] || { echo "missing $model (scripts/setup.sh fetches it)" >&2; exit 2; }
mkdir -p "$(dirname "$out")"
[[ -f $build/CMakeCache.txt ]] || cmake -S "$src" -B "$build" -DGGML_CUDA=ON \
  -DCMAKE_CUDA_ARCHITECTURES="${CUDA_ARCH:-90}" -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
  -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_APP=OFF -DLLAMA_BUILD_TOOLS=ON -DLLAMA_CURL=OFF \
  -DLLAMA_OPENSSL=OFF -DGGML_NATIVE=ON \
  -DCMAKE_BUILD_TYPE=Release > "$build.configure.log" 2>&1 || { tail -30 "$build.configure.log"; exit 1; }
t0=$(date +%s)
timeout "${LCP_BUILD_TIMEOUT:-500}" cmake --build "$build" -j "$(nproc)" --target llama-bench > "$build.log" 2>&1 \
  || { tail -20 "$build.log"; exit 1; }
echo "llama.cpp build: $(( $(date +%s) - t0 )) s"
"$build/bin/llama-bench" -m "$model" -p 512 -n 128 -ngl 99 -r 5 -o json > "$out"
"$build/bin/llama-bench" -m "$model" -p 512 -n 128 -ngl 99 -r 5 -o md
