#!/usr/bin/env bash
# mil-distill end to end on the first two layers of the real teacher (a minute on 2 cores): label ->
# stage 1 -> stage 2 -> eval, then stage 3 (--stage dpo) on its own, outputs in place, a rerun that
# finds everything done, mil-chat on the result (also speculative), a shrunk draft, and the
# refusals: another run's folder, malformed prompts (file and line named).
# Usage: distill_cli_test.sh MIL_DISTILL MIL_CHAT SOURCE_DIR WORK_DIR
set -euo pipefail
distill=$1 chat=$2 src=$3
source "$(dirname "${BASH_SOURCE[0]}")/../common/cli_test.sh" "$src" "$4"
args=(--teacher "$teacher" --teacher-layers 2 --prompts "$src/tests/distill/fixtures/prompts.jsonl"
      --max-prompts 9 --heldout 2 --max-answer 12 --mamba-layers 1 --tokens 300 --sft-tokens 100 --micro-batch 2
      --checkpoint-every 2 --eval-seqs 2 --show "Hi" --seed 3)

"$distill" "${args[@]}" --eval-every 100 -o "$work/run" > "$work/first.log" 2>&1 || { cat "$work/first.log"; fail "first run"; }
for f in run.json report.json labels/train/manifest.json labels/heldout/manifest.json \
         stage1-custom/metrics.jsonl stage1-custom/loss.svg stage1-custom/model/mil_distill_done \
         stage1-custom/model/mamba_config.json stage1-custom/model/tokenizer.json \
         stage2/metrics.jsonl stage2/model/mil_distill_done; do
  [[ -f $work/run/$f ]] || fail "missing $f"
done
grep -q '"after"' "$work/run/report.json" || fail "report.json has no metrics after training"
grep -q '"stage2"' "$work/run/report.json" || fail "report.json has no stage-2 metrics"
# Held-out evaluations during stage 1 (every 100 of ~300 tokens), and the same curve again after a
# resume from an earlier checkpoint (the evaluation at the resumed step is made again).
h=$work/run/stage1-custom/heldout.jsonl
[[ $(grep -c '"tokens_seen"' "$h") -ge 2 && -f $work/run/stage1-custom/heldout.svg ]] ||
  { cat "$h"; fail "no held-out curve during stage 1"; }
cp "$h" "$work/heldout.first"
last=$(ls -d "$work"/run/stage1-custom/checkpoints/step-* | sort | tail -1)
rm -rf "$work/run/stage1-custom/model" "$last"
"$distill" "${args[@]}" --eval-every 100 -o "$work/run" --only stage1 > "$work/resume.log" 2>&1 || { cat "$work/resume.log"; fail "stage-1 resume"; }
grep -q "resumed at step" "$work/resume.log" || { cat "$work/resume.log"; fail "stage 1 did not resume"; }
cmp -s "$h" "$work/heldout.first" || { diff "$work/heldout.first" "$h"; fail "the resumed run's held-out curve differs"; }

# Stage 3 from the stage-2 model: on-policy pairs on the 3 prompts beyond --max-prompts (12 in the
# fixture), DPO + NLL, metrics before and after.
dpo=(--stage dpo --dpo-epochs 1 --dpo-lr 1e-5 --dpo-prompts 3 --dpo-nll-weight 0.5)
"$distill" "${args[@]}" -o "$work/run" "${dpo[@]}" > "$work/dpo.log" 2>&1 ||
  { cat "$work/dpo.log"; fail "stage 3"; }
for f in labels/dpo/manifest.json pairs/dpo/manifest.json pairs/heldout/manifest.json \
         stage3/metrics.jsonl stage3/loss.svg stage3/model/mil_distill_done; do
  [[ -f $work/run/$f ]] || fail "missing $f"
done
grep -q '"reward_margin"' "$work/run/stage3/metrics.jsonl" || fail "stage-3 metrics have no reward margin"
# (No `| grep -q` under pipefail: grep -q stops reading at the first match and the writer's
# SIGPIPE would fail the pipeline.)
prompts=$(grep -A1 '"prompts": {' "$work/run/labels/dpo/manifest.json")
[[ $prompts == *'"count": 3,'* ]] || fail "labels/dpo does not hold the 3 extra prompts"
grep -q '"chosen_nll_weight": 0.5' "$work"/run/stage3/checkpoints/*/trainer.json || fail "stage 3 did not record its NLL weight"
grep -q "before stage 3: held-out preference accuracy" "$work/dpo.log" || { cat "$work/dpo.log"; fail "no preference metrics before stage 3"; }
grep -q "after stage 3: ppl ratio" "$work/dpo.log" || { cat "$work/dpo.log"; fail "no teacher-relative metrics after stage 3"; }
grep -q "stage2/model" "$work/run/report.json" || fail "stage 3 did not start from the stage-2 model"
[[ ! -e $work/run/stage3/heldout.jsonl ]] || fail "stage 3 made a held-out curve without --eval-every"

# A rerun finds every step done: nothing is labelled or trained again.
"$distill" "${args[@]}" -o "$work/run" > "$work/second.log" 2>&1 || { cat "$work/second.log"; fail "rerun"; }
grep -q "done already" "$work/second.log" || { cat "$work/second.log"; fail "rerun trained again"; }
"$distill" "${args[@]}" -o "$work/run" "${dpo[@]}" > "$work/dpo2.log" 2>&1 || { cat "$work/dpo2.log"; fail "stage-3 rerun"; }
grep -q "stage 3 is done already" "$work/dpo2.log" || { cat "$work/dpo2.log"; fail "stage-3 rerun trained again"; }
if grep -q "^labelling \[" "$work/second.log"; then fail "rerun labelled again"; fi

# A draft shrunk from the teacher (--draft 2: its first and last layers, CE on the labels), on its
# own; mil-chat uses it below.
"$distill" "${args[@]}" -o "$work/run" --only draft --draft 2 --draft-epochs 1 > "$work/draft.log" 2>&1 ||
  { cat "$work/draft.log"; fail "the draft"; }
[[ -f $work/run/draft2/model/mil_distill_done && -f $work/run/draft2/metrics.jsonl ]] || fail "no draft model"
grep -q "draft, after training: ppl ratio" "$work/draft.log" || { cat "$work/draft.log"; fail "the draft was not evaluated"; }
grep -q '"draft2"' "$work/run/report.json" || fail "report.json has no draft2"
for key in steps stage2 stage3; do  # what earlier runs reported stays
  grep -q "\"$key\": [{[]" "$work/run/report.json" || { cat "$work/run/report.json"; fail "--only draft dropped '$key' from report.json"; }
done
# A second answer per training prompt (--answers 2): a round of labels of its own, to the same
# prompts with other draws, read beside the first (twice the training answers).
if "$distill" "${args[@]}" -o "$work/run" --only draft --draft 2 --answers 2 > "$work/answers.log" 2>&1; then
  fail "--answers 2 without its labels accepted"
fi
grep -q "no answers of round 2" "$work/answers.log" || { cat "$work/answers.log"; fail "no clear error for missing round-2 labels"; }
"$distill" "${args[@]}" -o "$work/run" --only label --answers 2 > "$work/label2.log" 2>&1 ||
  { cat "$work/label2.log"; fail "--only label --answers 2"; }
"$distill" "${args[@]}" -o "$work/run" --only draft --draft 2 --answers 2 > "$work/answers.log" 2>&1 ||
  { cat "$work/answers.log"; fail "--answers 2"; }
[[ -f $work/run/labels/train.2/manifest.json ]] || fail "--answers 2 made no labels/train.2"
one=$(sed -n 's/^\[mil-distill\] labels: \([0-9]*\) training answers.*/\1/p' "$work/first.log")
two=$(sed -n 's/^\[mil-distill\] labels: \([0-9]*\) training answers.*/\1/p' "$work/answers.log")
[[ -n $one && $two == $((2 * one)) ]] || fail "--answers 2 read $two training answers, not twice $one"
if cmp -s "$work/run/labels/train/shard-00000.bin" "$work/run/labels/train.2/shard-00000.bin"; then
  fail "the second round's answers equal the first's"
fi
# A stage-1 checkpoint resumes only on the label rounds it was trained on: with its model gone,
# --answers 2 is refused by name, and the run's own settings finish it again.
stage1=$(ls -d "$work"/run/stage1-*/ | head -1)
mv "$stage1/model" "$work/stage1-model"
if "$distill" "${args[@]}" -o "$work/run" --only stage1 --answers 2 > "$work/resume2.log" 2>&1; then
  fail "a stage-1 checkpoint of one answer round resumed on two"
fi
grep -q "answers" "$work/resume2.log" || { cat "$work/resume2.log"; fail "no clear error for other label rounds"; }
"$distill" "${args[@]}" -o "$work/run" --only stage1 > "$work/resume1.log" 2>&1 || { cat "$work/resume1.log"; fail "stage-1 resume on its own rounds"; }
[[ -f $stage1/model/mil_distill_done ]] || fail "stage 1 was not finished again"
if "$distill" "${args[@]}" -o "$work/run" --only draft > "$work/nodraft.log" 2>&1; then fail "--only draft without --draft accepted"; fi
grep -q "needs --draft 2 or 4" "$work/nodraft.log" || { cat "$work/nodraft.log"; fail "no clear error for --only draft without --draft"; }

# The result chats; with speculative decoding (prompt lookup, and the shrunk draft) it says
# exactly the same.
"$chat" -m "$work/run/stage2/model" -p "Hello" -n 4 --temp 0 > "$work/chat.log" 2>&1 || { cat "$work/chat.log"; fail "mil-chat"; }
"$chat" -m "$work/run/stage2/model" -p "Say hello twice" -n 24 --temp 0 > "$work/plain.txt" 2> "$work/plain.log" ||
  { cat "$work/plain.log"; fail "mil-chat"; }
for how in "--lookup" "--lookup --draft-adaptive" "-md $work/run/draft2/model"; do
  # shellcheck disable=SC2086
  "$chat" -m "$work/run/stage2/model" -p "Say hello twice" -n 24 --temp 0 $how > "$work/spec.txt" 2> "$work/spec.log" ||
    { cat "$work/spec.log"; fail "mil-chat $how"; }
  cmp -s "$work/plain.txt" "$work/spec.txt" || { diff "$work/plain.txt" "$work/spec.txt"; fail "mil-chat $how changed the answer"; }
  grep -q "speculation: .* drafted tokens accepted" "$work/spec.log" || { cat "$work/spec.log"; fail "mil-chat $how printed no acceptance"; }
done
# --logits-out: the logits of every prompt position, one row per token of the prompt (as many as
# mil-chat reads for it), and causal: a longer prompt's first rows equal the shorter one's.
model=$work/run/stage2/model
"$chat" -m "$model" --raw -p "Say hello" -n 1 --temp 0 > /dev/null 2> "$work/count.log" || { cat "$work/count.log"; fail "mil-chat --raw"; }
for p in "Say hello" "Say hello twice"; do
  out=$work/logits-${p// /_}.json
  "$chat" -m "$model" --raw -p "$p" --logits-out "$out" > "$work/logits.log" 2>&1 || { cat "$work/logits.log"; fail "--logits-out"; }
  [[ ! -e $out.tmp ]] || fail "--logits-out left its temporary file"
done
python3 - "$work/logits-Say_hello.json" "$work/logits-Say_hello_twice.json" \
  "$(sed -n 's/.*prompt: \([0-9]*\) tokens.*/\1/p' "$work/count.log")" <<'EOF' || fail "--logits-out wrote wrong logits"
import json, math, sys
short, long_ = (json.load(open(f)) for f in sys.argv[1:3])
n = int(sys.argv[3])
assert len(short["ids"]) == n and len(short["logits"]) == n, (short["ids"], n)
assert long_["ids"][:n] == short["ids"] and len(long_["logits"]) > n
for d in (short, long_):
    assert all(len(row) == d["vocab"] for row in d["logits"]) and d["vocab"] > 0
    assert all(math.isfinite(v) for row in d["logits"] for v in row)
for i in range(n):  # the same prefix gives the same rows (within float rounding of a longer step)
    worst = max(abs(a - b) for a, b in zip(short["logits"][i], long_["logits"][i]))
    assert worst < 1e-4, (i, worst)
assert short["logits"][0] != short["logits"][n - 1]  # rows are per position, not one row repeated
EOF
# The last row is the one generation reads: its argmax is the greedy first token mil-chat prints
# (byte-level tokens decoded with the GPT-2 alphabet; a special token prints nothing).
"$chat" -m "$model" --raw -p "Say hello" -n 1 --temp 0 > "$work/first_token.txt" 2> /dev/null || fail "mil-chat -n 1"
python3 - "$work/logits-Say_hello.json" "$work/first_token.txt" "$model/tokenizer.json" <<'EOF' || fail "--logits-out's last row is not what generation reads"
import json, sys
d, printed, tok = json.load(open(sys.argv[1])), open(sys.argv[2], "rb").read(), json.load(open(sys.argv[3]))
keep = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
char_to_byte, extra = {chr(b): b for b in keep}, 0
for b in range(256):
    if b not in keep:
        char_to_byte[chr(256 + extra)], extra = b, extra + 1
id_to_token = {i: t for t, i in tok["model"]["vocab"].items()}
special = {t["id"] for t in tok.get("added_tokens", []) if t.get("special")}
row = d["logits"][-1]
best = max(range(len(row)), key=row.__getitem__)
if best in special:
    assert printed.strip() == b"", (best, printed)
else:
    piece = bytes(char_to_byte[c] for c in id_to_token[best])
    assert printed in (piece, piece + b"\n"), (best, piece, printed)
EOF
if "$chat" -m "$model" --logits-out "$work/none.json" > "$work/nop.log" 2>&1; then fail "--logits-out without -p accepted"; fi
grep -q "needs a prompt" "$work/nop.log" || { cat "$work/nop.log"; fail "no clear error for --logits-out without -p"; }

# With a repetition penalty, which looks back over the prompt too, in both paths alike.
"$chat" -m "$work/run/stage2/model" -p "Say hello twice" -n 24 --temp 0 --repeat-penalty 1.5 > "$work/plain_penalty.txt" 2> "$work/plain.log" ||
  { cat "$work/plain.log"; fail "mil-chat with a penalty"; }
"$chat" -m "$work/run/stage2/model" -p "Say hello twice" -n 24 --temp 0 --repeat-penalty 1.5 --lookup > "$work/spec.txt" 2> "$work/spec.log" ||
  { cat "$work/spec.log"; fail "mil-chat --lookup with a penalty"; }
cmp -s "$work/plain_penalty.txt" "$work/spec.txt" || { diff "$work/plain_penalty.txt" "$work/spec.txt"; fail "--lookup changed the answer under a repetition penalty"; }
# Sampling with a draft (the rejection rule; its distribution is tested in test_speculative).
"$chat" -m "$work/run/stage2/model" -p "Say hello twice" -n 12 --temp 0.7 -md "$work/run/draft2/model" > "$work/spec.txt" 2> "$work/spec.log" ||
  { cat "$work/spec.log"; fail "mil-chat sampling with a draft"; }
grep -q "speculation: .* drafted tokens accepted" "$work/spec.log" || { cat "$work/spec.log"; fail "sampling with a draft printed no acceptance"; }

# Refusals: a folder holding another run; malformed prompts, named by file and line.
other=("${args[@]:0:${#args[@]}-2}" --seed 4)  # args end with --seed 3
if "$distill" "${other[@]}" -o "$work/run" > "$work/other.log" 2>&1; then fail "another run's folder accepted"; fi
grep -q "holds another run" "$work/other.log" || { cat "$work/other.log"; fail "no clear error for another run's folder"; }
printf '{"messages":[{"role":"user","content":"ok"}]}\n{"messages": [\n' > "$work/bad.jsonl"
if "$distill" --teacher "$teacher" --teacher-layers 2 --prompts "$work/bad.jsonl" -o "$work/bad" > "$work/bad.log" 2>&1; then fail "malformed prompts accepted"; fi
grep -q "bad.jsonl:2" "$work/bad.log" || { cat "$work/bad.log"; fail "the error does not name bad.jsonl:2"; }
echo "mil-distill end to end: ok"
rm -rf "$work"
