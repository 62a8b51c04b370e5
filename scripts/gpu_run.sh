#!/usr/bin/env bash
# Runs the GPU tests and benchmarks of a CUDA build on a machine with a GPU and writes one result
# file for the run (format and naming: bench/results/README.md):
#   scripts/gpu_run.sh [BUILD_DIR] [BENCH_FILTER]
# BUILD_DIR defaults to build/cuda (configure and build it with the `cuda` preset first, on this
# machine: ctest runs the test program from where the build put it).
# The tests run in the GPU-required mode (MIL_REQUIRE_GPU=1): a missing or unusable device fails
# them instead of skipping them. The exit code is 0 only for a clean run: every test passed and
# every benchmark measured.
# Environment: RESULTS_DIR (default bench/results) receives the result file; the raw outputs
# (JUnit XML, benchmark JSON, logs) go to $OUT when set, else to out/.
# MIL_COMMIT (and MIL_TREE_DIRTY=1 if the build had changes) names the commit when set (a GPU
# machine's copy of .git may name an older snapshot); else git does.
set -uo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build=$(cd "${1:-$repo/build/cuda}" && pwd) || exit 2
filter=${2:-.}
logs=${OUT:-$repo/out}
results=${RESULTS_DIR:-$repo/bench/results}
mkdir -p "$logs" "$results"
export MIL_REQUIRE_GPU=1
# Shared libraries carried next to the build when the GPU machine lacks them (Google Benchmark).
[ -d "$repo/.carry/lib" ] && export LD_LIBRARY_PATH="$repo/.carry/lib:${LD_LIBRARY_PATH:-}"

nvidia-smi --query-gpu=index,name,driver_version,memory.total,clocks.max.sm,clocks.max.memory \
  --format=csv > "$logs/gpu_device.csv" 2>&1
nvidia-smi > "$logs/nvidia_smi.txt" 2>&1
cat "$logs/gpu_device.csv"

echo "== GPU tests"
# One process per test case: a crash loses one case, not the run.
ctest --test-dir "$build" -L gpu --timeout 600 --output-on-failure \
  --output-junit "$logs/gpu_tests.xml" 2>&1 | tee "$logs/gpu_tests.log" | tail -40
tests_exit=${PIPESTATUS[0]}

echo "== GPU benchmarks"
"$build/bench/mil_bench_cuda" --benchmark_filter="$filter" --benchmark_repetitions=3 \
  --benchmark_report_aggregates_only=true --benchmark_counters_tabular=true \
  --benchmark_out="$logs/gpu_bench.json" --benchmark_out_format=json 2>&1 | tee "$logs/gpu_bench.log" \
  | grep -E 'median|Benchmark|^-|ERROR' | cut -c1-230
bench_exit=${PIPESTATUS[0]}

echo "== Result file"
python3 "$repo/scripts/gpu_results.py" --junit "$logs/gpu_tests.xml" --tests-exit "$tests_exit" \
  --bench "$logs/gpu_bench.json" --bench-exit "$bench_exit" --bench-filter "$filter" \
  --smi-csv "$logs/gpu_device.csv" --smi-text "$logs/nvidia_smi.txt" \
  --build-dir "$build" --repo "$repo" --out-dir "$results"
