#!/usr/bin/env bash
# Runs the GPU tests and benchmarks of a CUDA build on a machine with a GPU, in one go:
#   scripts/gpu_run.sh [BUILD_DIR] [BENCH_FILTER]
# BUILD_DIR defaults to build/cuda (configure and build it with the `cuda` preset first).
# Logs go to $OUT when set (the lent-GPU workflow), else to out/.
set -uo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build=${1:-$repo/build/cuda}
filter=${2:-.}
logs=${OUT:-$repo/out}
mkdir -p "$logs"
# Shared libraries carried next to the build when the GPU machine lacks them (Google Benchmark).
[ -d "$repo/.carry/lib" ] && export LD_LIBRARY_PATH="$repo/.carry/lib:${LD_LIBRARY_PATH:-}"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv || true
status=0
echo "== GPU tests"
"$build/tests/mil_tests_cuda" --duration=true 2>&1 | tee "$logs/gpu_tests.log" | grep -vE '^\s*$' | tail -60
[ "${PIPESTATUS[0]}" = 0 ] || status=1
echo "== GPU benchmarks"
"$build/bench/mil_bench_cuda" --benchmark_filter="$filter" --benchmark_repetitions=3 \
  --benchmark_report_aggregates_only=true --benchmark_counters_tabular=true \
  --benchmark_out="$logs/gpu_bench.json" --benchmark_out_format=json 2>&1 | tee "$logs/gpu_bench.log" \
  | grep -E 'median|Benchmark|^-' | cut -c1-230
[ "${PIPESTATUS[0]}" = 0 ] || status=1
exit $status
