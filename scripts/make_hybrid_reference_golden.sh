#!/usr/bin/env bash
# Regenerates tests/nn/golden/hybrid_reference.json: the logits of small random hybrids (Mamba-2
# and Mamba-1, 0% and 50% attention, tied and untied, the reference's doubled dt bias) computed by
# scripts/check_hybrid_reference.py, an independent float64 numpy implementation of the
# reference code's forward, from the checkpoints mil's save_hybrid writes.
#   scripts/make_hybrid_reference_golden.sh [BUILD_DIR]   (default build/default; needs numpy)
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build=${1:-$repo/build/default}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# The test writes the checkpoints when asked to, instead of comparing.
MIL_WRITE_HYBRID_GOLDEN="$work" "$build/tests/mil_tests" \
  -tc="hybrid reference: logits equal the numpy reference forward of the saved checkpoint" >/dev/null
python3 - "$work" "$repo/scripts/check_hybrid_reference.py" "$repo/tests/nn/golden/hybrid_reference.json" <<'PY'
import json, os, subprocess, sys
work, script, out = sys.argv[1:]
ids = json.load(open(os.path.join(work, "ids.json")))
golden = {"ids": ids, "models": {}}
for name in sorted(os.listdir(work)):
    folder = os.path.join(work, name)
    if not os.path.isdir(folder):
        continue
    res = json.loads(subprocess.check_output(
        [sys.executable, script, folder, "--ids", ",".join(map(str, ids))]))
    golden["models"][name] = [[float("%.7g" % v) for v in row] for row in res["logits"]]
with open(out, "w") as f:
    json.dump(golden, f, separators=(",", ":"))
print("wrote", out, "models:", ", ".join(golden["models"]))
PY
