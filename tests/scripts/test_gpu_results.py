#!/usr/bin/env python3
"""Tests of scripts/gpu_results.py on a small recorded run (gpu_results_fixture/): a passing, a
failing and a skipped GPU test; a benchmark with aggregates and a peer, one with bare repetitions,
one that stopped with an error. Run by ctest (label cpu): python3 test_gpu_results.py."""
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import unittest

sys.dont_write_bytecode = True  # no __pycache__ beside the script

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURE = os.path.join(HERE, "gpu_results_fixture")
spec = importlib.util.spec_from_file_location(
    "gpu_results", os.path.join(HERE, "..", "..", "scripts", "gpu_results.py"))
gpu_results = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gpu_results)


class GpuResults(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp()
        self.repo = os.path.join(self.tmp, "repo")  # a copy without .git
        self.build = os.path.join(self.tmp, "build")
        os.makedirs(os.path.join(self.build, "CMakeFiles", "3.28.3"))
        os.makedirs(self.repo)
        with open(os.path.join(self.build, "CMakeCache.txt"), "w") as f:
            f.write("CMAKE_BUILD_TYPE:STRING=Release\nCMAKE_CUDA_ARCHITECTURES:STRING=90\n")
        compiler = os.path.join(self.build, "CMakeFiles", "3.28.3", "CMakeCUDACompiler.cmake")
        with open(compiler, "w") as f:
            f.write('set(CMAKE_CUDA_COMPILER_ID "NVIDIA")\n'
                    'set(CMAKE_CUDA_COMPILER_VERSION "12.8.61")\n')
        self.out = os.path.join(self.tmp, "results")
        os.environ["MIL_COMMIT"] = "0123456789abcdef0123456789abcdef01234567"
        os.environ.pop("MIL_TREE_DIRTY", None)

    def tearDown(self):
        shutil.rmtree(self.tmp)

    def run_script(self, junit="gpu_tests.xml", bench="gpu_bench.json", tests_exit=8, bench_exit=0):
        argv = ["--junit", os.path.join(FIXTURE, junit), "--tests-exit", str(tests_exit),
                "--bench", os.path.join(FIXTURE, bench), "--bench-exit", str(bench_exit),
                "--smi-csv", os.path.join(FIXTURE, "gpu_device.csv"),
                "--smi-text", os.path.join(FIXTURE, "nvidia_smi.txt"), "--build-dir", self.build,
                "--repo", self.repo, "--out-dir", self.out, "--now", "2026-12-05T08:02:03Z"]
        before = set(os.listdir(self.out)) if os.path.isdir(self.out) else set()
        code = gpu_results.main(argv)
        files = sorted(os.listdir(self.out))
        (written,) = set(files) - before
        with open(os.path.join(self.out, written)) as f:
            return code, files, json.load(f)

    def test_file_is_named_by_date_device_and_commit(self):
        _, files, r = self.run_script()
        self.assertEqual(files, ["2026-12-05-nvidia-h100-80gb-hbm3-0123456789.json"])
        self.assertEqual(r["commit"], os.environ["MIL_COMMIT"])
        self.assertFalse(r["tree_dirty"])
        self.assertEqual(r["device"]["name"], "NVIDIA H100 80GB HBM3")
        self.assertEqual(r["device"]["driver"], "570.86.15")
        self.assertEqual(r["device"]["cuda_driver_api"], "12.8")
        self.assertEqual(r["build"]["cuda_toolkit"], "NVIDIA 12.8.61")
        self.assertEqual(r["build"]["cuda_architectures"], "90")

    def test_a_second_run_never_overwrites_the_first(self):
        self.run_script()
        _, files, _ = self.run_script()
        self.assertEqual(files, ["2026-12-05-nvidia-h100-80gb-hbm3-0123456789-2.json",
                                 "2026-12-05-nvidia-h100-80gb-hbm3-0123456789.json"])

    def test_every_case_keeps_its_own_result(self):
        code, _, r = self.run_script()
        results = {c["name"]: c["result"] for c in r["tests"]["cases"]}
        self.assertEqual(results, {"gpu: rmsnorm cuda: forward matches the CPU": "pass",
                                   "gpu: ssd scan cuda: backward matches the CPU": "fail",
                                   "gpu: core cuda: allocator reuses blocks": "skip"})
        self.assertEqual((r["tests"]["pass"], r["tests"]["fail"], r["tests"]["skip"]), (1, 1, 1))
        failed = [c for c in r["tests"]["cases"] if c["result"] == "fail"][0]
        self.assertIn("CHECK( max_err <= tol ) is NOT correct!", failed["output_tail"])
        self.assertFalse(r["ok"])
        self.assertEqual(code, 1)

    def test_benchmarks_report_the_median_with_peer_and_floor_ratios(self):
        _, _, r = self.run_script()
        cases = {c["name"]: c for c in r["benchmarks"]["cases"]}
        ssd = cases["BM_ssd_scan_cuda/S_fwd/manual_time"]
        self.assertEqual((ssd["time"], ssd["time_unit"], ssd["stddev"]), (0.15, "ms", 0.02))
        self.assertEqual(ssd["peer_ratio"], 4.0)
        self.assertAlmostEqual(ssd["peer_time"], 0.60)  # the peer's 0.60 ms: 4x slower
        self.assertEqual(ssd["floor_ratio"], 0.1133)
        self.assertEqual(ssd["counters"]["floor_us"], 17.0)
        # Bare repetitions: the one with the median time, and its own counters.
        norm = cases["rmsnorm_forward_gpu_bf16/rows16384_dim576/manual_time"]
        self.assertEqual((norm["time"], norm["floor_ratio"], norm["repetitions"]), (27.0, 0.47, 3))
        self.assertNotIn("peer_ratio", norm)
        self.assertEqual(cases["BM_llama_decode_cuda/teacher"], {
            "name": "BM_llama_decode_cuda/teacher", "error": "out of memory"})

    def test_ok_only_for_a_clean_run(self):
        clean = os.path.join(self.tmp, "clean.xml")
        with open(os.path.join(FIXTURE, "gpu_tests.xml")) as f:
            text = f.read()
        start = text.index('\t<testcase name="gpu: ssd scan')
        with open(clean, "w") as f:
            f.write(text[:start] + "</testsuite>\n")
        clean_bench = os.path.join(self.tmp, "clean.json")
        with open(os.path.join(FIXTURE, "gpu_bench.json")) as f:
            doc = json.load(f)
        doc["benchmarks"] = [b for b in doc["benchmarks"] if not b.get("error_occurred")]
        with open(clean_bench, "w") as f:
            json.dump(doc, f)
        code, _, r = self.run_script(junit=clean, bench=clean_bench, tests_exit=0)
        self.assertTrue(r["ok"])
        self.assertEqual(code, 0)
        # The same run with a benchmark error, or with ctest's failing exit code, is not ok.
        self.assertFalse(self.run_script(junit=clean, tests_exit=0)[2]["ok"])
        self.assertFalse(self.run_script(junit=clean, bench=clean_bench, tests_exit=8)[2]["ok"])

    def test_a_run_that_did_not_finish_is_recorded_as_such(self):
        code, _, r = self.run_script(junit="missing.xml", bench="missing.json", bench_exit=139)
        self.assertIn("did not finish", r["tests"]["error"])
        self.assertIn("did not finish", r["benchmarks"]["error"])
        self.assertEqual(r["benchmarks"]["exit_code"], 139)
        self.assertFalse(r["ok"])
        self.assertEqual(code, 1)

    def test_the_executable_is_named_without_the_machine_s_directories(self):
        with open(os.path.join(FIXTURE, "gpu_bench.json")) as f:
            doc = json.load(f)
        for executable, expected in ((os.path.join(self.repo, "build", "cuda", "mil_bench_cuda"),
                                      os.path.join("build", "cuda", "mil_bench_cuda")),
                                     ("/elsewhere/build/mil_bench_cuda", "mil_bench_cuda")):
            doc["context"]["executable"] = executable
            path = os.path.join(self.tmp, "bench.json")
            with open(path, "w") as f:
                json.dump(doc, f)
            _, _, r = self.run_script(bench=path)
            self.assertEqual(r["benchmarks"]["context"]["executable"], expected)

    def test_commit_and_changes_from_git(self):
        os.environ.pop("MIL_COMMIT")  # git's answer is used only without MIL_COMMIT
        git = ["git", "-C", self.repo, "-c", "user.name=t", "-c", "user.email=t@t"]
        subprocess.run(["git", "init", "-q", self.repo], check=True)
        with open(os.path.join(self.repo, "a.txt"), "w") as f:
            f.write("a\n")
        subprocess.run(git + ["add", "a.txt"], check=True)
        subprocess.run(git + ["commit", "-q", "-m", "a"], check=True)
        head = subprocess.run(git + ["rev-parse", "HEAD"], capture_output=True,
                              text=True).stdout.strip()
        os.makedirs(os.path.join(self.repo, "bench", "results"))
        with open(os.path.join(self.repo, "bench", "results", "earlier.json"), "w") as f:
            f.write("{}\n")
        _, files, r = self.run_script()
        # Result files of earlier runs do not make the tree dirty.
        self.assertEqual((r["commit"], r["tree_dirty"]), (head, False))
        self.assertEqual(files, [f"2026-12-05-nvidia-h100-80gb-hbm3-{head[:10]}.json"])
        with open(os.path.join(self.repo, "a.txt"), "a") as f:
            f.write("changed\n")
        _, files, r = self.run_script()
        self.assertEqual((r["tree_dirty"], r["changed_files"]), (True, ["a.txt"]))
        self.assertIn(f"2026-12-05-nvidia-h100-80gb-hbm3-{head[:10]}-dirty.json", files)
        # MIL_COMMIT wins over the copy's .git, which may name an older snapshot than the build's.
        os.environ["MIL_COMMIT"] = "fedcba9876543210fedcba9876543210fedcba98"
        _, _, r = self.run_script()
        self.assertEqual((r["commit"], r["tree_dirty"], r["commit_from"]),
                         (os.environ["MIL_COMMIT"], False, "MIL_COMMIT"))


class FailureOutput(unittest.TestCase):
    def test_paths_of_the_repository_become_relative(self):
        tmp = tempfile.mkdtemp()
        try:
            junit = os.path.join(tmp, "gpu_tests.xml")
            with open(junit, "w") as f:
                f.write('<testsuite><testcase name="a" status="run"><failure/><system-out>'
                        f'{tmp}/tests/x.cu:70: ERROR\nother /elsewhere/y.cu:1</system-out>'
                        '</testcase></testsuite>')
            tail = gpu_results.read_tests(junit, 8, tmp)["cases"][0]["output_tail"]
            self.assertEqual(tail, "tests/x.cu:70: ERROR\nother /elsewhere/y.cu:1")
        finally:
            shutil.rmtree(tmp)


if __name__ == "__main__":
    unittest.main()
