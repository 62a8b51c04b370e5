# Sourced by the programs' end-to-end tests: the teacher they run on (the test is skipped without
# it), a fresh work folder, and fail().
# Usage: source cli_test.sh SOURCE_DIR WORK_DIR   (sets $teacher and $work)
teacher=$1/models/SmolLM2-135M-Instruct.Q4_1.gguf
work=$2
if [[ ! -f $teacher ]]; then
  echo "[mil] teacher model not found: test skipped ($teacher; run scripts/setup.sh)"
  exit 0
fi
rm -rf "$work" && mkdir -p "$work"
fail() { echo "FAILED: $*" >&2; exit 1; }
