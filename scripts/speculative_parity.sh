#!/usr/bin/env bash
# Proof that speculative decoding changes nothing, on real models: for the teacher and its 50%
# Mamba-2 and Mamba-1 hybrids (converted by mil-convert), greedy mil-chat output with prompt
# lookup and with a draft model must be byte-identical to plain greedy decoding for N tokens
# (default 512; the prompts are raw text, which the models continue without an end-of-text token,
# and the check fails if any run stops short of N). Prints each run's acceptance and tokens/s.
#
# Usage: scripts/speculative_parity.sh DRAFT [N]
#   DRAFT  draft model folder or file for -md (e.g. a shrunk draft: mil-distill ... --only draft
#          --draft 2 writes RUN/draft2/model)
# Needs build/cpu (or $MIL_BUILD) with mil-chat and mil-convert, and the teacher in models/.
# Runs on the CPU, where verification rows are bitwise decode steps (a few minutes per target).
# With MIL_BUILD=build/cuda it runs on the GPU, whose bf16 verification rows are not bitwise
# decode steps: a run that parts from plain decoding reports the byte where it did and keeps both
# texts (WORK/<target>-<prompt>-<how>.txt and -plain.txt).
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
draft=${1:?usage: speculative_parity.sh DRAFT [N]}
n=${2:-512}
bin=${MIL_BUILD:-$repo/build/cpu}/examples
teacher=$repo/models/SmolLM2-135M-Instruct.Q4_1.gguf
work=${MIL_WORK:-$repo/out/speculative_parity}
for f in "$bin/mil-chat" "$bin/mil-convert" "$teacher"; do
  [[ -e $f ]] || { echo "missing $f (scripts/setup.sh --preset cpu builds the programs and fetches the teacher)" >&2; exit 2; }
done
mkdir -p "$work"

targets=("$teacher")
for mixer in mamba2 mamba1; do
  out=$work/hybrid50-$mixer
  [[ -f $out/mamba_config.json ]] || "$bin/mil-convert" --teacher "$teacher" --layout 50% --mixer "$mixer" -o "$out" > /dev/null
  targets+=("$out")
done
prompts=("The history of the printing press begins" "def fibonacci(n):")

failed=0
for target in "${targets[@]}"; do
  for i in "${!prompts[@]}"; do
    chat=("$bin/mil-chat" -m "$target" --raw -p "${prompts[$i]}" -n "$n" -c $((n + 64)) --temp 0)
    "${chat[@]}" > "$work/plain.txt" 2> "$work/plain.log"
    generated=$(sed -n 's/.*generated: \([0-9]*\) tokens.*/\1/p' "$work/plain.log")
    for how in "--lookup" "-md $draft"; do
      # shellcheck disable=SC2086
      "${chat[@]}" $how > "$work/spec.txt" 2> "$work/spec.log"
      speed=$(sed -n 's/.*generated: [0-9]* tokens, \([0-9.]*\) tokens\/s.*/\1/p' "$work/spec.log")
      plain_speed=$(sed -n 's/.*generated: [0-9]* tokens, \([0-9.]*\) tokens\/s.*/\1/p' "$work/plain.log")
      accept=$(sed -n 's/.*speculation: \(.*\)/\1/p' "$work/spec.log")
      verdict=identical
      if ! cmp -s "$work/plain.txt" "$work/spec.txt"; then
        # Where the two parted: the first differing byte, of the plain text's bytes.
        # (cmp names the first differing byte, or, when one text is a prefix of the other, the
        # last byte of the shorter: the texts part at the byte after it.)
        said=$(cmp "$work/plain.txt" "$work/spec.txt" 2>&1 || true)
        at=$(sed -n 's/.*byte \([0-9]*\).*/\1/p' <<< "$said")
        [[ $said == *EOF* && -n $at ]] && at=$((at + 1))
        verdict="DIFFERENT from byte ${at:-?} of $(wc -c < "$work/plain.txt")"; failed=1
        cp "$work/spec.txt" "$work/$(basename "$target")-$i-${how%% *}.txt"
        cp "$work/plain.txt" "$work/$(basename "$target")-$i-plain.txt"
      fi
      if [[ $generated != "$n" ]]; then verdict="$verdict, but only $generated tokens"; failed=1; fi
      printf '%s | prompt %d | %s | %s | %s tokens/s (plain %s) | %s\n' "$(basename "$target")" "$i" \
        "${how%% *}" "$verdict" "$speed" "$plain_speed" "$accept"
    done
  done
done
exit $failed
