#!/usr/bin/env bash
# mil-bench on the real teacher with tiny sizes (about half a minute on 2 cores): the Markdown
# table, the jsonl / csv records (names, batch sizes, speeds, speculation counts, run context),
# prompt-lookup speculation against its baseline, and the refusals of bad input.
# Usage: bench_cli_test.sh MIL_BENCH PYTHON3 SOURCE_DIR WORK_DIR
set -euo pipefail
bench=$1 python=$2
source "$(dirname "${BASH_SOURCE[0]}")/../common/cli_test.sh" "$3" "$4"

# Markdown: a header, its rule and one row per test (pp and tg at batches 1 and 2, flags repeated).
"$bench" -m "$teacher" -p 8 -n 4 -b 1 -b 2 -r 1 -t 1 > "$work/md.txt" 2> "$work/md.log" ||
  { cat "$work/md.log"; fail "md run"; }
[[ $(head -1 "$work/md.txt") == "| model "*"| test "*" t/s |"* ]] || { cat "$work/md.txt"; fail "md: no header"; }
[[ $(sed -n 2p "$work/md.txt") == "| ---"* ]] || { cat "$work/md.txt"; fail "md: no rule under the header"; }
rows=$(grep -cE '^\| .*\| (pp8|tg4) +\| +[12] \| +[0-9.]+ ± [0-9.]+ \|' "$work/md.txt" || true)
[[ $rows == 4 && $(wc -l < "$work/md.txt") == 6 ]] || { cat "$work/md.txt"; fail "md: expected 4 test rows, got $rows"; }
grep -q "pp8, batch 2" "$work/md.log" || { cat "$work/md.log"; fail "md: no progress on stderr"; }

# jsonl with prompt lookup (comma lists): every stdout line a record; the speculative rows and
# their baseline at each batch size; acceptance in [0, 1] and at least 1 token per step.
"$bench" -m "$teacher" -p 8 -n 8 -b 1,2 -r 2 -t 1 --lookup --draft-max 2,4 -o jsonl > "$work/out.jsonl" 2> "$work/jsonl.log" ||
  { cat "$work/jsonl.log"; fail "jsonl run"; }
"$python" - "$work/out.jsonl" "$teacher" <<'EOF' || fail "jsonl records"
import json, os, re, sys
lines = open(sys.argv[1]).read().splitlines()
records = [json.loads(line) for line in lines]
got = [(r["test"], r["batch"]) for r in records]
want = [("pp8", 1), ("tg8", 1), ("pp8", 2), ("tg8", 2), ("tg8 chat", 1),
        ("tg8+lookup K2", 1), ("tg8+lookup K4", 1), ("tg8 chat", 2),
        ("tg8+lookup K2", 2), ("tg8+lookup K4", 2)]
assert got == want, f"tests {got}, expected {want}"
for r in records:
    t = r["tokens_per_second"]
    assert isinstance(t, float) and t > 0, f"{r['test']}: tokens/s {t!r}"
    assert len(r["samples"]) == 2 and r["repetitions"] == 2, f"{r['test']}: samples {r['samples']}"
    assert abs(sum(r["samples"]) / 2 - t) <= 1e-9 * t, f"{r['test']}: mean of {r['samples']} is not {t}"
    assert r["tokens_per_second_sd"] >= 0, r
    assert r["threads"] == 1 and r["backend"] == "cpu" and r["dtype"] == "f32", r
    assert r["weights"] == "blocks", r  # the GGUF file's quantised blocks, read in place
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", r["time"]), r["time"]
    assert r["build"] and r["cpu"], r
    assert r["model_path"] == sys.argv[2] and r["model_bytes"] == os.path.getsize(sys.argv[2]), r
    assert r["layout"] == "30 attn" and r["model_params"] > 100e6, r
    speculative = "lookup" in r["test"]
    assert r["draft"] == ("lookup" if speculative else "none"), r
    assert r["prompt"] == ("chat" if "tg8 " in r["test"] or speculative else "random"), r
    if speculative:
        assert r["drafted"] > 0 and 0 <= r["accepted"] <= r["drafted"], r
        assert 0 <= r["acceptance"] <= 1 and r["acceptance"] == r["accepted"] / r["drafted"], r
        # Tokens per step after each sequence's first: at least 1 (a step gives a token), and the
        # steps at most one per later token of each sequence and run.
        assert r["tokens_per_step"] >= 1, r
        assert 0 < r["target_steps"] <= r["batch"] * r["repetitions"] * (r["n_gen"] - 1), r
        # Both sequences of a batch of 2 draft: twice the tokens of one (the same prompt, greedy).
        if r["batch"] == 2:
            one = next(x for x in records if x["test"] == r["test"] and x["batch"] == 1)
            assert r["drafted"] == 2 * one["drafted"] and r["accepted"] == 2 * one["accepted"], (r, one)
    else:
        assert r["acceptance"] is None and r["tokens_per_step"] is None, r
EOF

# A draft model (the teacher itself: greedy, it agrees with itself every time) at batches 1 and 2,
# one decoder per sequence; -o json is one array.
"$bench" -m "$teacher" -p 0 -n 6 -b 1,2 -r 1 -t 1 -md "$teacher" --draft-max 2 -o json > "$work/out.json" 2> "$work/json.log" ||
  { cat "$work/json.log"; fail "json run with a draft model"; }
"$python" - "$work/out.json" "$teacher" <<'EOF' || fail "json records"
import json, sys
records = json.load(open(sys.argv[1]))
got = [(r["test"], r["batch"]) for r in records]
want = [("tg6", 1), ("tg6", 2), ("tg6 chat", 1), ("tg6+draft K2", 1), ("tg6 chat", 2), ("tg6+draft K2", 2)]
assert got == want, f"tests {got}, expected {want}"
for r in records:
    if r["draft"] != "model":
        continue
    assert r["draft_model"] == sys.argv[2], r
    # Every draft kept: 3 tokens per step but for the budget's end (5 tokens after the first: 2 steps).
    assert r["acceptance"] == 1 and r["target_steps"] == 2 * r["batch"], r
    assert r["tokens_per_step"] == 2.5, r
EOF

# A run that fails part-way (its second model is missing) exits non-zero with a clear error and
# still leaves a valid JSON array holding the first model's records.
if "$bench" -m "$teacher" -m "$work/missing.gguf" -p 4 -n 0 -r 1 -t 1 -o json > "$work/part.json" 2> "$work/part.log"; then
  fail "a missing second model accepted"
fi
grep -q "missing.gguf" "$work/part.log" || { cat "$work/part.log"; fail "no clear error for a missing model"; }
"$python" - "$work/part.json" <<'EOF' || fail "the output of a failed run is not a JSON array of the first model's records"
import json, sys
records = json.load(open(sys.argv[1]))
assert [(r["test"], r["batch"]) for r in records] == [("pp4", 1)], records
EOF

# csv: a header naming the fields and one row per test, numbers as numbers; --float-weights runs
# the products on float copies of the weights.
"$bench" -m "$teacher" -p 4,8 -n 0 -r 1 --float-weights -o csv > "$work/out.csv" 2> "$work/csv.log" ||
  { cat "$work/csv.log"; fail "csv run"; }
"$python" - "$work/out.csv" <<'EOF' || fail "csv records"
import csv, sys
rows = list(csv.DictReader(open(sys.argv[1], newline="")))
assert [(r["test"], r["batch"]) for r in rows] == [("pp4", "1"), ("pp8", "1")], rows
for r in rows:
    assert float(r["tokens_per_second"]) > 0 and int(r["n_gen"]) == 0 and r["acceptance"] == "", r
    assert r["weights"] == "f32", r
EOF

# Bad input: a clear error and a non-zero exit.
refuse() {  # refuse WHAT EXPECTED-MESSAGE ARGS...
  local what=$1 message=$2
  shift 2
  if "$bench" "$@" > "$work/bad.txt" 2> "$work/bad.log"; then fail "$what accepted"; fi
  grep -q -- "$message" "$work/bad.log" || { cat "$work/bad.log"; fail "no clear error for $what"; }
}
refuse "-o xml" "--output: xml not in" -m "$teacher" -o xml
refuse "-b 0" "--batch: Value 0 not in range" -m "$teacher" -b 0
refuse "a prompt beyond the context" "test pp9000 needs 9000 tokens per sequence; the context of" -m "$teacher" -p 9000
refuse "nothing to run" "nothing to measure" -m "$teacher" -p 0 -n 0
refuse "-n 1 with speculation" "no step to time" -m "$teacher" -p 0 -n 1 --lookup
echo "mil-bench: ok"
rm -rf "$work"
