#!/usr/bin/env python3
"""Writes one decode-run result file (bench/results/README.md, "mil-decode-run/1") from what a GPU
machine returned: mil-bench's JSON-lines records, llama.cpp's llama-bench JSON (the peer, same
card, same sitting), Google Benchmark JSON of the decode/verify/prefill benchmarks and the lines of
scripts/speculative_parity.sh. Standard library only.

  scripts/decode_result.py --commit SHA [--dirty] --device-name NAME --driver VER --date YYYY-MM-DD
      --mil-bench A.jsonl [B.jsonl ...] [--llama-bench L.json] [--llama-version V]
      [--gbench G.json] [--parity P.txt] [--note TEXT ...] --out-dir bench/results [--tag decode]
"""
import argparse
import json
import os
import re
import sys


def mil_bench_records(paths):
    keep = ("model_name", "model_path", "layout", "mixer", "weights", "backend", "dtype", "test",
            "n_prompt", "n_gen", "batch", "prompt", "draft", "draft_max", "repetitions",
            "tokens_per_second", "tokens_per_second_sd", "samples", "drafted", "accepted",
            "acceptance", "target_steps", "tokens_per_step")
    out = []
    for path in paths:
        with open(path) as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    r = json.loads(line)
                except json.JSONDecodeError as e:
                    sys.exit(f"{path}:{n}: not JSON: {e}")
                rec = {k: r[k] for k in keep if k in r}
                rec["model"] = os.path.basename(str(rec.pop("model_path", ""))) or rec.get("model_name")
                out.append(rec)
    return out


def llama_bench_records(path):
    with open(path) as f:
        runs = json.load(f)
    keep = ("model_type", "model_size", "n_prompt", "n_gen", "n_batch", "n_ubatch", "n_gpu_layers",
            "flash_attn", "type_k", "type_v", "avg_ts", "stddev_ts", "samples_ts", "test_time")
    return [{k: r[k] for k in keep if k in r} for r in runs]


def gbench_records(path):
    with open(path) as f:
        data = json.load(f)
    out = []
    benchmarks = data.get("benchmarks", [])
    # With repetitions, the median aggregate stands for its runs; without, each run is one record.
    aggregated = any(b.get("run_type") == "aggregate" for b in benchmarks)
    for b in benchmarks:
        if aggregated and (b.get("run_type") != "aggregate" or b.get("aggregate_name") != "median"):
            continue
        rec = {"name": b["name"], "time": b.get("real_time"), "time_unit": b.get("time_unit")}
        # steps_equiv, verify_us, decode_us: BM_llama135m_verify (a verification step in decode steps).
        for k in ("tokens/s", "floor/time", "peer/time", "TB/s", "TFLOP/s", "steps_equiv", "verify_us",
                  "decode_us", "label"):
            if k in b:
                rec[k] = b[k]
        out.append(rec)
    return out


LINE = re.compile(r"^(?P<target>[^|]+) \| prompt (?P<prompt>\d+) \| (?P<how>\S+) \| (?P<verdict>[^|]+) \| "
                  r"(?P<speed>[\d.]+) tokens/s \(plain (?P<plain>[\d.]+)\) \| (?P<accept>.*)$")


def parity_records(path):
    out = []
    with open(path) as f:
        for line in f:
            m = LINE.match(line.strip())
            if not m:
                if " | prompt " in line:
                    print(f"{path}: a parity line not understood, left out: {line.strip()}", file=sys.stderr)
                continue
            v = m["verdict"].strip()
            parted = re.search(r"from byte (\d+) of (\d+)", v)
            out.append({"target": m["target"].strip(), "prompt": int(m["prompt"]), "draft": m["how"],
                        "identical": v.startswith("identical"),
                        "parted_at_byte": int(parted[1]) if parted else None,
                        "plain_bytes": int(parted[2]) if parted else None,
                        "short": "only" in v, "tokens_per_second": float(m["speed"]),
                        "plain_tokens_per_second": float(m["plain"]), "speculation": m["accept"].strip()})
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--commit", required=True)
    p.add_argument("--dirty", action="store_true")
    p.add_argument("--device-name", required=True)
    p.add_argument("--driver", required=True)
    p.add_argument("--date", required=True)
    p.add_argument("--mil-bench", nargs="+", required=True)
    p.add_argument("--llama-bench")
    p.add_argument("--llama-version", default="")
    p.add_argument("--gbench")
    p.add_argument("--parity")
    p.add_argument("--note", action="append", default=[])
    p.add_argument("--out-dir", required=True)
    p.add_argument("--tag", default="decode")
    a = p.parse_args()
    if not re.fullmatch(r"[0-9a-f]{10,40}", a.commit):
        sys.exit(f"--commit: '{a.commit}' is not a hex commit")
    result = {"format": "mil-decode-run/1", "date": a.date, "commit": a.commit, "tree_dirty": a.dirty,
              "device": {"name": a.device_name, "driver": a.driver},
              "mil_bench": mil_bench_records(a.mil_bench)}
    if a.llama_bench:
        result["llama_cpp"] = {"version": a.llama_version, "results": llama_bench_records(a.llama_bench)}
    if a.gbench:
        result["benchmarks"] = gbench_records(a.gbench)
    if a.parity:
        result["speculative_parity"] = parity_records(a.parity)
    result["notes"] = a.note
    device = re.sub(r"[^a-z0-9]+", "-", a.device_name.lower()).strip("-")
    name = f"{a.date}-{device}-{a.commit[:10]}{'-dirty' if a.dirty else ''}-{a.tag}.json"
    path = os.path.join(a.out_dir, name)
    if os.path.exists(path):
        sys.exit(f"{path} exists: result files are never overwritten")
    with open(path, "w") as f:
        json.dump(result, f, indent=1)
        f.write("\n")
    print(f"{path}: {len(result['mil_bench'])} mil-bench records"
          f"{', llama.cpp ' + str(len(result['llama_cpp']['results'])) if a.llama_bench else ''}"
          f"{', parity ' + str(len(result.get('speculative_parity', []))) if a.parity else ''}")


if __name__ == "__main__":
    main()
