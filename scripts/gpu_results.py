#!/usr/bin/env python3
"""Combines one GPU run into one result file (format: bench/results/README.md).

Inputs are the raw outputs scripts/gpu_run.sh collects: ctest's JUnit XML of the GPU tests,
Google Benchmark's JSON of mil_bench_cuda, nvidia-smi's view of the card and the build's
CMakeCache.txt. The file is named <date>-<device>-<commit>.json and is never overwritten.
Standard library only: the GPU machine has no network.
"""
import argparse
import csv
import datetime
import json
import os
import re
import statistics
import subprocess
import sys
import xml.etree.ElementTree as ET

FORMAT = "mil-gpu-result/1"


def read_tests(junit_path, exit_code, repo=None):
    """Every test case of ctest's JUnit file as pass / fail / skip (fail when ctest said so).
    Paths inside `repo` in the failure output are written relative to it: the file names no
    folder of the machine that ran."""
    prefix = os.path.abspath(repo) + os.sep if repo else None
    tests = {"exit_code": exit_code, "cases": []}
    try:
        root = ET.parse(junit_path).getroot()
    except (OSError, ET.ParseError) as e:
        tests["error"] = f"no readable JUnit file ({e}): the test run did not finish"
        return tests
    for case in root.iter("testcase"):
        if case.find("failure") is not None or case.find("error") is not None:
            result = "fail"
        elif case.find("skipped") is not None or case.get("status") in ("notrun", "disabled"):
            result = "skip"
        elif case.get("status", "run") == "run":
            result = "pass"
        else:
            result = "fail"
        entry = {"name": case.get("name"), "result": result, "seconds": float(case.get("time", 0))}
        if result != "pass":
            out = case.findtext("system-out") or ""
            if prefix:
                out = out.replace(prefix, "")
            lines = [line for line in out.splitlines() if line.strip()]
            entry["output_tail"] = "\n".join(lines[-20:])  # why it failed or skipped
        tests["cases"].append(entry)
    for result in ("pass", "fail", "skip"):
        tests[result] = sum(c["result"] == result for c in tests["cases"])
    return tests


def _figures(entry):
    """The counters of one Google Benchmark entry (everything that is not bookkeeping)."""
    bookkeeping = {"name", "family_index", "per_family_instance_index", "run_name", "run_type",
                   "repetitions", "repetition_index", "threads", "aggregate_name",
                   "aggregate_unit", "iterations", "real_time", "cpu_time", "time_unit",
                   "error_occurred", "error_message", "label"}
    return {k: v for k, v in entry.items() if k not in bookkeeping}


def portable_path(path, repo):
    """A path as the repository names it: relative to its root when inside it, else the file name
    alone (a result file names no directory of the machine that wrote it)."""
    if not os.path.isabs(path):
        return path
    rel = os.path.relpath(os.path.realpath(path), os.path.realpath(repo))
    return os.path.basename(path) if rel.startswith("..") else rel


def read_benchmarks(bench_path, exit_code, repo):
    """One record per benchmark: the median time, its spread, the counters at the median and the
    peer and floor ratios named as such. Works with and without aggregate rows."""
    benches = {"exit_code": exit_code, "cases": []}
    try:
        with open(bench_path) as f:
            doc = json.load(f)
    except (OSError, ValueError) as e:
        benches["error"] = f"no readable benchmark JSON ({e}): the benchmark run did not finish"
        return benches
    context = doc.get("context", {})
    benches["context"] = {k: context[k] for k in ("date", "host_name", "executable", "num_cpus",
                                                   "library_build_type") if k in context}
    if "executable" in benches["context"]:
        benches["context"]["executable"] = portable_path(benches["context"]["executable"], repo)
    runs = {}  # run_name -> {"iterations": [...], "aggregates": {name: entry}}, in file order
    for entry in doc.get("benchmarks", []):
        name = entry.get("run_name", entry["name"])
        run = runs.setdefault(name, {"iterations": [], "aggregates": {}})
        if entry.get("run_type") == "aggregate":
            run["aggregates"][entry.get("aggregate_name")] = entry
        else:
            run["iterations"].append(entry)
    for name, run in runs.items():
        errors = [e.get("error_message", "") for e in run["iterations"] if e.get("error_occurred")]
        if errors:
            benches["cases"].append({"name": name, "error": errors[0]})
            continue
        median = run["aggregates"].get("median")
        if median is None:  # no aggregates: the repetition with the median time stands for all
            reps = sorted(run["iterations"], key=lambda e: e["real_time"])
            median = reps[(len(reps) - 1) // 2]
        record = {"name": name, "time": median["real_time"], "time_unit": median["time_unit"],
                  "repetitions": median.get("repetitions", len(run["iterations"]) or 1)}
        if "stddev" in run["aggregates"]:
            record["stddev"] = run["aggregates"]["stddev"]["real_time"]
        elif len(run["iterations"]) > 1:
            record["stddev"] = statistics.stdev(e["real_time"] for e in run["iterations"])
        counters = _figures(median)
        record["counters"] = counters
        if "floor/time" in counters:
            record["floor_ratio"] = counters["floor/time"]
        if counters.get("peer/time"):
            # peer/time = peer's time / this time: > 1 means faster than the peer.
            record["peer_ratio"] = counters["peer/time"]
            record["peer_time"] = counters["peer/time"] * median["real_time"]
        benches["cases"].append(record)
    return benches


def read_device(smi_csv, smi_text):
    """The cards nvidia-smi lists (CSV with its header line) and the CUDA version of the driver."""
    device = {"gpus": []}
    try:
        with open(smi_csv) as f:
            rows = list(csv.reader(f, skipinitialspace=True))
        header = [h.split(" [")[0] for h in rows[0]]  # "memory.total [MiB]" -> "memory.total"
        if "name" in header:
            device["gpus"] = [dict(zip(header, row)) for row in rows[1:] if row]
        else:
            device["error"] = "nvidia-smi: " + " ".join(" ".join(r) for r in rows)[:300]
    except (OSError, IndexError) as e:
        device["error"] = f"no nvidia-smi output ({e})"
    if device["gpus"]:
        first = device["gpus"][0]  # CUDA device 0, which the tests and benchmarks use
        device["name"] = first.get("name", "unknown")
        device["driver"] = first.get("driver_version", "unknown")
    try:
        with open(smi_text) as f:
            m = re.search(r"CUDA Version:\s*([0-9.]+)", f.read())
        if m:
            device["cuda_driver_api"] = m.group(1)
    except OSError:
        pass
    return device


def read_build(build_dir):
    """What the build was configured with: CMakeCache.txt and the compilers CMake found."""
    build = {}
    cached = {"CMAKE_BUILD_TYPE": "build_type", "CMAKE_CUDA_ARCHITECTURES": "cuda_architectures",
              "MIL_CUDA": "mil_cuda"}
    try:
        with open(os.path.join(build_dir, "CMakeCache.txt")) as f:
            for line in f:
                key, _, value = line.rstrip("\n").partition("=")
                if key.split(":")[0] in cached:
                    build[cached[key.split(":")[0]]] = value
    except OSError as e:
        build["error"] = f"no CMakeCache.txt ({e})"
    # The compilers' versions live in CMakeFiles/<cmake version>/CMake<LANG>Compiler.cmake.
    files = os.path.join(build_dir, "CMakeFiles")
    for sub in sorted(os.listdir(files)) if os.path.isdir(files) else []:
        for lang, key in (("CUDA", "cuda_toolkit"), ("CXX", "cxx_compiler")):
            try:
                with open(os.path.join(files, sub, f"CMake{lang}Compiler.cmake")) as f:
                    text = f.read()
            except OSError:
                continue
            ident = re.search(rf'CMAKE_{lang}_COMPILER_ID "([^"]*)"', text)
            version = re.search(rf'CMAKE_{lang}_COMPILER_VERSION "([^"]*)"', text)
            if version:
                build[key] = f"{ident.group(1) if ident else ''} {version.group(1)}".strip()
    return build


def read_commit(repo):
    """The commit and whether the tree differed from it. MIL_COMMIT (and MIL_TREE_DIRTY=1 when the
    build had changes) wins when set: a GPU machine's copy of .git can name another commit than
    the one built (the device copies a snapshot of the repository taken earlier). Else git's HEAD
    and status; else the commit is unknown."""
    commit = os.environ.get("MIL_COMMIT", "")
    if commit:
        dirty = os.environ.get("MIL_TREE_DIRTY", "0") not in ("", "0")
        return {"commit": commit, "tree_dirty": dirty, "commit_from": "MIL_COMMIT"}

    def git(*args):
        return subprocess.run(["git", "-C", repo, *args], capture_output=True, text=True,
                              check=True).stdout
    try:
        commit = git("rev-parse", "HEAD").strip()
        # Result files written by earlier runs do not change what was built.
        status = git("status", "--porcelain", "--untracked-files=all").splitlines()
        changed = [line[3:] for line in status if not line[3:].startswith("bench/results/")]
        return {"commit": commit, "tree_dirty": bool(changed), "changed_files": changed,
                "commit_from": "git"}
    except (OSError, subprocess.CalledProcessError):
        return {"commit": "unknown", "tree_dirty": True, "commit_from": "none"}


def slug(text):
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "unknown"


def result_path(out_dir, date, device_name, source):
    commit = source["commit"][:10] if source["commit"] != "unknown" else "nocommit"
    stem = f"{date}-{slug(device_name)}-{commit}{'-dirty' if source['tree_dirty'] else ''}"
    path, n = os.path.join(out_dir, stem + ".json"), 2
    while os.path.exists(path):  # a second run of the same commit on the same day keeps both
        path, n = os.path.join(out_dir, f"{stem}-{n}.json"), n + 1
    return path


def combine(args):
    now = args.now or datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    result = {"format": FORMAT, "date": now, **read_commit(args.repo),
              "device": read_device(args.smi_csv, args.smi_text),
              "build": read_build(args.build_dir),
              "gpu_required": os.environ.get("MIL_REQUIRE_GPU", ""),
              "tests": read_tests(args.junit, args.tests_exit, args.repo),
              "benchmarks": read_benchmarks(args.bench, args.bench_exit, args.repo)}
    result["benchmarks"]["filter"] = args.bench_filter
    t, b = result["tests"], result["benchmarks"]
    # A clean run: every test ran and passed, every benchmark measured, both programs exited 0.
    result["ok"] = (t["exit_code"] == 0 and "error" not in t and t["fail"] + t["skip"] == 0
                    and t["pass"] > 0 and b["exit_code"] == 0 and "error" not in b
                    and bool(b["cases"]) and not any("error" in c for c in b["cases"]))
    return result


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--junit", required=True, help="ctest --output-junit file of the GPU tests")
    p.add_argument("--tests-exit", type=int, required=True, help="ctest's exit code")
    p.add_argument("--bench", required=True, help="mil_bench_cuda --benchmark_out JSON file")
    p.add_argument("--bench-exit", type=int, required=True, help="mil_bench_cuda's exit code")
    p.add_argument("--bench-filter", default=".", help="the --benchmark_filter of the run")
    p.add_argument("--smi-csv", required=True, help="nvidia-smi --query-gpu=... --format=csv")
    p.add_argument("--smi-text", required=True, help="plain nvidia-smi output (CUDA version)")
    p.add_argument("--build-dir", required=True)
    p.add_argument("--repo", required=True, help="the checkout that was built")
    p.add_argument("--out-dir", required=True, help="where the result file goes")
    p.add_argument("--now", help="UTC time of the run, ISO 8601 (default: now)")
    args = p.parse_args(argv)
    result = combine(args)
    os.makedirs(args.out_dir, exist_ok=True)
    path = result_path(args.out_dir, result["date"][:10], result["device"].get("name", "unknown"),
                       result)
    with open(path, "w") as f:
        json.dump(result, f, indent=1, sort_keys=False)
        f.write("\n")
    t = result["tests"]
    print(f"{path}: tests {t.get('pass', 0)} passed, {t.get('fail', 0)} failed, "
          f"{t.get('skip', 0)} skipped; {len(result['benchmarks']['cases'])} benchmarks; "
          f"{'ok' if result['ok'] else 'NOT OK'}")
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
