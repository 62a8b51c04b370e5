#!/usr/bin/env bash
# Runs mil's whole test suite on a fresh machine by itself: installs the dependencies, fetches the
# teacher model (the golden tests against llama.cpp, HF tokenizers and the gguf package need it)
# and builds (scripts/setup.sh), runs every test of the preset (GPU tests report "skipped" without
# a GPU), then builds the CPU tests under AddressSanitizer + UndefinedBehaviorSanitizer and runs
# them.
#
# Usage: scripts/test.sh [--no-asan] [--no-model] [--preset NAME]
#   --no-asan      skip the sanitizer build and run
#   --no-model     do not fetch the teacher (its tests then report "skipped")
#   --preset NAME  preset of the main build and test run (default: default)
# Environment: MIL_JOBS = parallel build and test jobs (default: nproc).
# Exits non-zero when any step fails; a summary of the steps is printed at the end.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"

say() { printf '[mil test] %s\n' "$*"; }
die() {
  printf '[mil test] error: %s\n' "$*" >&2
  exit 2
}

preset=default
asan=1
model_flag=
while (($#)); do
  case "$1" in
    --no-asan) asan=0 ;;
    --no-model) model_flag=--no-model ;;
    --preset)
      (($# >= 2)) || die "--preset needs a name (default, cpu, cuda, debug)"
      preset=$2
      shift
      ;;
    --preset=*) preset=${1#*=} ;;
    -h | --help) sed -n '2,13s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"; exit 0 ;;
    *) die "unknown option '$1' (try --help)" ;;
  esac
  shift
done
jobs=${MIL_JOBS:-$(nproc 2>/dev/null || echo 2)}
export MIL_JOBS=$jobs

summary=()
failed=0
started=$SECONDS
n_passed=0
n_failed=0
n_skipped=0
logs=$repo/build/test-logs
mkdir -p "$logs"

# step NAME COMMAND...: runs the command, records "NAME: ok|FAILED (time)" for the summary.
step() {
  local name=$1 t0=$SECONDS rc=0
  shift
  say "== $name: $*"
  "$@" || rc=$?
  if ((rc == 0)); then
    summary+=("$name: ok ($((SECONDS - t0)) s)")
  else
    summary+=("$name: FAILED with exit code $rc ($((SECONDS - t0)) s)")
    failed=1
  fi
  return "$rc"
}

# run_ctest PRESET: ctest with its output kept in build/test-logs/PRESET.log, whose closing lines
# add to the counts of the summary.
run_ctest() {
  local log=$logs/$1.log rc total bad skipped
  ctest --preset "$1" -j "$jobs" 2>&1 | tee "$log"
  rc=${PIPESTATUS[0]}
  total=$(sed -n 's/.*tests failed out of \([0-9][0-9]*\).*/\1/p' "$log" | tail -n 1)
  bad=$(sed -n 's/.* \([0-9][0-9]*\) tests failed out of.*/\1/p' "$log" | tail -n 1)
  skipped=$(grep -cE '^[[:space:]]*[0-9]+ - .* \(Skipped\)$' "$log" || true)
  if [[ -n $total && -n $bad ]]; then
    n_failed=$((n_failed + bad))
    n_skipped=$((n_skipped + skipped))
    n_passed=$((n_passed + total - bad - skipped))
  elif ((rc != 0)); then
    n_failed=$((n_failed + 1))  # ctest stopped before its summary: count the run as one failure
  fi
  return "$rc"
}

finish() {
  say "== summary (total $((SECONDS - started)) s)"
  local line
  for line in "${summary[@]}"; do say "  $line"; done
  if ((failed)); then
    say "FAILED"
  else
    say "all passed"
  fi
  # The one closing line over all test runs (skipped: GPU tests on a machine without a GPU).
  echo "mil: $n_passed passed, $n_failed failed, $n_skipped skipped"
  exit "$failed"
}

# The main build: a failure here leaves nothing to test.
# The tests read small prompt fixtures, not the default prompt sets (mil-distill's data).
step "setup + build ($preset)" bash scripts/setup.sh $model_flag --no-prompts --preset "$preset" || finish
step "tests ($preset)" run_ctest "$preset" || true

if ((asan)); then
  if step "build (asan)" bash scripts/setup.sh --no-model --no-prompts --preset asan; then
    step "tests (asan: ASan + UBSan, CPU)" run_ctest asan || true
  fi
else
  summary+=("asan: skipped (--no-asan)")
fi
finish
