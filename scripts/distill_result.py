#!/usr/bin/env python3
"""Writes one `mil-distill-run/1` result file (bench/results/README.md) from the outputs of a
`mil-distill` run on a GPU machine: the run folder's report.json and run.json, each step's
metrics.jsonl and heldout.jsonl, and the printed log (label statistics).

  scripts/distill_result.py --run RUN_DIR --log LOG [--log LOG2 ...] --commit HASH
      --device-name NAME --driver VERSION --command "mil-distill ..." [--note TEXT ...]
      [--out-dir bench/results]

Standard-library Python; the curve keeps every 25th optimizer step and the last one."""
import argparse
import datetime
import json
import pathlib
import re
import statistics
import sys

LABELS = re.compile(r"^\[mil-distill\]\s+(\d+) answers, (\d+) answer tokens, ([\d.]+) tokens/s; "
                    r"skipped: (\d+) too long, (\d+) empty")
LABELLING = re.compile(r"^\[mil-distill\] labelling (\d+) \S+ prompts into \S*?([^/\s]+)$")
HELDOUT_LINE = re.compile(r"held-out at (\d+) tokens: ppl ratio ([\d.]+) \| KL ([\d.]+) \| "
                          r"top-1 agreement ([\d.]+)% \((\d+) tokens\)")
CURVE_KEYS = ("tokens_seen", "loss", "ce", "kl", "lr", "grad_norm")
METRIC_KEYS = {"ppl_ratio": "ppl_ratio", "kl": "kl", "top1_agreement": "top1_agreement",
               "tokens": "tokens"}


def label_stats(logs):
    """The last labelling summary of each label folder (train, train.2, ..., heldout) printed in the
    logs."""
    out, split, prompts = {}, None, 0
    for log in logs:
        for line in pathlib.Path(log).read_text().splitlines():
            m = LABELLING.match(line)
            if m:
                prompts, split = int(m.group(1)), m.group(2)
                continue
            m = LABELS.match(line)
            if m and split:
                out[split] = {"prompts": prompts, "answers": int(m.group(1)),
                              "answer_tokens": int(m.group(2)),
                              "tokens_per_s": float(m.group(3)),
                              "skipped_too_long": int(m.group(4)), "skipped_empty": int(m.group(5))}
    return out


def printed_heldout(logs, rows):
    """The held-out evaluations a log printed during training ("held-out at N tokens: ..."), for a
    run whose heldout.jsonl did not come back. A metrics row's "step" is the step's index, counted
    before it, while heldout.jsonl counts the steps done: an evaluation after the row whose
    tokens_seen is N is at step index + 1. A point printed twice (a resumed run evaluates its
    step again) is kept once, the later print."""
    step_at = {r.get("tokens_seen"): r["step"] + 1 for r in rows}
    out = {}
    for log in logs:
        for line in pathlib.Path(log).read_text().splitlines():
            m = HELDOUT_LINE.search(line)
            if not m:
                continue
            seen = int(m.group(1))
            if seen not in step_at:
                raise SystemExit(f"{log}: held-out at {seen} tokens matches no step of metrics.jsonl")
            out[step_at[seen]] = {"step": step_at[seen], "tokens_seen": seen,
                                  "ppl_ratio": float(m.group(2)), "kl": float(m.group(3)),
                                  "top1_agreement": float(m.group(4)) / 100,
                                  "tokens": int(m.group(5)), "from": "log"}
    return [out[step] for step in sorted(out)]


def stage_record(folder, logs=()):
    rows = [json.loads(l) for l in (folder / "metrics.jsonl").read_text().splitlines() if l.strip()]
    if not rows:
        raise SystemExit(f"{folder}/metrics.jsonl has no steps")
    steps = [r["step"] for r in rows]
    if steps != list(range(len(rows))):
        raise SystemExit(f"{folder}/metrics.jsonl: steps are not 0..{len(rows) - 1} in order")
    curve = [{"step": r["step"], **{k: r[k] for k in CURVE_KEYS if k in r}}
             for i, r in enumerate(rows) if i % 25 == 0 or i == len(rows) - 1]
    # The first steps of each (re)start include warm-up and allocation: the median is robust.
    speeds = [r["tokens_per_s"] for r in rows if "tokens_per_s" in r]
    record = {"steps": len(rows), "tokens_seen": rows[-1].get("tokens_seen"),
              "median_tokens_per_s": statistics.median(speeds) if speeds else None, "curve": curve}
    # Held-out evaluations during training (mil-distill --eval-every), every one kept.
    heldout_log = folder / "heldout.jsonl"
    if heldout_log.exists():
        record["heldout_curve"] = [
            {"step": e["step"], "tokens_seen": e["tokens_seen"], **heldout(e)}
            for e in (json.loads(l) for l in heldout_log.read_text().splitlines() if l.strip())]
    elif logs:
        record["heldout_curve"] = printed_heldout(logs, rows)
    return record


def heldout(metrics):
    return {name: metrics[key] for key, name in METRIC_KEYS.items() if key in metrics}


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", required=True, type=pathlib.Path)
    ap.add_argument("--log", action="append", default=[])
    ap.add_argument("--heldout-log", action="append", default=[],
                    help="STAGE=LOG: a training log whose printed held-out evaluations stand in for "
                         "the stage folder's heldout.jsonl where that did not come back")
    ap.add_argument("--commit", required=True)
    ap.add_argument("--device-name", required=True)
    ap.add_argument("--driver", required=True)
    ap.add_argument("--command", required=True)
    ap.add_argument("--date", default=datetime.datetime.now(datetime.timezone.utc).date().isoformat())
    ap.add_argument("--note", action="append", default=[])
    ap.add_argument("--tag", default="distill", help="file name suffix (distill, distill-25, ...)")
    ap.add_argument("--out-dir", type=pathlib.Path, default=pathlib.Path("bench/results"))
    a = ap.parse_args(argv)
    if not re.fullmatch(r"[0-9a-f]{40}", a.commit):
        raise SystemExit("--commit: give the full 40-digit hash of the commit that ran")

    printed_logs = {}
    for spec in a.heldout_log:
        stage, _, log = spec.partition("=")
        if not log:
            raise SystemExit(f"--heldout-log {spec}: expected STAGE=LOG, e.g. stage1-attn50=stage1.log")
        printed_logs.setdefault(stage, []).append(log)
    stages = {}
    folders = sorted(p.parent for p in a.run.glob("*/metrics.jsonl"))
    unknown = set(printed_logs) - {f.name for f in folders}
    if unknown:
        raise SystemExit(f"--heldout-log: no stage folder {sorted(unknown)} with metrics.jsonl in {a.run}")
    for folder in folders:
        stages[folder.name] = stage_record(folder, printed_logs.get(folder.name, []))
    report = a.run / "report.json"
    if report.exists():
        for step in json.loads(report.read_text()).get("steps", []):
            name = pathlib.PurePath(step.get("model", "")).parent.name
            rec = stages.setdefault(name, {})
            rec["layout"] = step.get("layout")
            for when in ("before", "after"):
                if when in step:
                    rec[f"heldout_{when}"] = heldout(step[when])
    if not stages:
        raise SystemExit(f"{a.run}: no stage metrics and no report")

    run_json = a.run / "run.json"
    result = {
        "format": "mil-distill-run/1",
        "date": a.date,
        "device": {"name": a.device_name, "driver": a.driver},
        "commit": a.commit,
        "command": a.command,
        "run": json.loads(run_json.read_text()) if run_json.exists() else None,
        "labels": label_stats(a.log),
        "stages": stages,
        "notes": a.note,
    }
    device = re.sub(r"[^a-z0-9]+", "-", a.device_name.lower()).strip("-")
    a.out_dir.mkdir(parents=True, exist_ok=True)
    path = a.out_dir / f"{a.date}-{device}-{a.commit[:10]}-{a.tag}.json"
    if path.exists():
        raise SystemExit(f"{path} exists: result files are never overwritten (choose --tag)")
    path.write_text(json.dumps(result, indent=1) + "\n")
    for name, rec in stages.items():
        after = rec.get("heldout_after", {})
        print(f"{path.name}: {name}: {rec.get('steps', 0)} steps, "
              f"{rec.get('median_tokens_per_s') or 0:.0f} tok/s, held-out after {after}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
