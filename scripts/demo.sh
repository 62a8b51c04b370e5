#!/usr/bin/env bash
# The main job (until the distillation issues land): sets the machine up (Debian packages, the
# default teacher, a build), then runs mil-demo on the CPU: a small Llama-style byte-level model
# trained on mil's own sources and docs, with its loss curve written to out/demo_loss.svg.
# Extra arguments go to mil-demo (e.g. --steps 100; see build/default/examples/mil-demo --help).
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
"$repo/scripts/setup.sh" --preset default --target mil-demo  # only the program the demo runs
mkdir -p "$repo/out"
cd "$repo"
mapfile -t corpus < <(find README.md docs include/mil -type f \( -name '*.md' -o -name '*.hpp' \) | sort)
exec build/default/examples/mil-demo --plot out/demo_loss.svg "$@" "${corpus[@]}"
