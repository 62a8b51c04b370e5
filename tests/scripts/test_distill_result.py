#!/usr/bin/env python3
"""Tests of scripts/distill_result.py on a small run folder written here: a stage-1 step with
metrics, held-out figures and a held-out curve (or the printed one), the labelling log of two
answer rounds and the held-out split, a resumed run whose metrics
repeat steps (refused), an existing file (never overwritten) and a short commit (refused).
Run by ctest (label cpu): python3 test_distill_result.py."""
import importlib.util
import io
import json
import os
import pathlib
import shutil
import sys
import tempfile
import unittest
from contextlib import redirect_stdout

sys.dont_write_bytecode = True  # no __pycache__ beside the script

HERE = pathlib.Path(__file__).resolve().parent
spec = importlib.util.spec_from_file_location(
    "distill_result", HERE.parent.parent / "scripts" / "distill_result.py")
distill_result = importlib.util.module_from_spec(spec)
spec.loader.exec_module(distill_result)

COMMIT = "0123456789abcdef0123456789abcdef01234567"
LOG = """[mil-distill] prompts: 96 for training, 4 held out (0 duplicates dropped)
[mil-distill] labelling 96 train prompts into /tmp/r/labels/train
[mil-distill]   90 answers, 12000 answer tokens, 6543.2 tokens/s; skipped: 5 too long, 1 empty
[mil-distill] labelling 96 train prompts into /tmp/r/labels/train.2
[mil-distill]   91 answers, 12100 answer tokens, 6500.0 tokens/s; skipped: 5 too long, 0 empty
[mil-distill] labelling 4 heldout prompts into /tmp/r/labels/heldout
[mil-distill]   4 answers, 500 answer tokens, 321.0 tokens/s; skipped: 0 too long, 0 empty
"""


def metrics_row(step, speed):
    return {"step": step, "tokens_seen": 100 * (step + 1), "loss": 10.0 - step / 10, "ce": 1.0,
            "kl": 5.0 - step / 20, "lr": 1e-3, "grad_norm": 2.0, "tokens_per_s": speed,
            "skipped": False}


class DistillResult(unittest.TestCase):
    def setUp(self):
        self.tmp = pathlib.Path(tempfile.mkdtemp())
        self.run = self.tmp / "run"
        stage = self.run / "stage1-attn50"
        stage.mkdir(parents=True)
        # 60 steps; the speeds make the median differ from the mean and from the last step.
        speeds = [1000.0 if s < 3 else 5000.0 + s for s in range(60)]
        (stage / "metrics.jsonl").write_text(
            "".join(json.dumps(metrics_row(s, speeds[s])) + "\n" for s in range(60)))
        report = {"steps": [{"layout": "50%", "model": "/tmp/r/stage1-attn50/model",
                             "before": {"ppl_ratio": 900.0, "kl": 11.0, "top1_agreement": 0.01,
                                        "tokens": 500, "teacher_ppl": 2.5},
                             "after": {"ppl_ratio": 1.25, "kl": 0.58, "top1_agreement": 0.76,
                                       "tokens": 500, "model_ppl": 3.1}}]}
        (self.run / "report.json").write_text(json.dumps(report))
        (stage / "heldout.jsonl").write_text("".join(
            json.dumps({"step": s, "tokens_seen": 100 * s, "ppl_ratio": 2.0 - s / 100, "kl": 1.0,
                        "top1_agreement": 0.5, "tokens": 500, "teacher_ppl": 2.5}) + "\n"
            for s in (20, 40)))
        (self.run / "run.json").write_text(json.dumps({"seed": 0, "heldout": 4}))
        self.log = self.tmp / "log.txt"
        self.log.write_text(LOG)
        self.out = self.tmp / "results"

    def tearDown(self):
        shutil.rmtree(self.tmp)

    def write(self, *extra):
        args = ["--run", str(self.run), "--log", str(self.log), "--commit", COMMIT,
                "--device-name", "NVIDIA H100 80GB HBM3", "--driver", "580.1", "--date",
                "2026-12-06", "--command", "mil-distill --layout 50%", "--out-dir", str(self.out),
                *extra]
        with redirect_stdout(io.StringIO()):
            distill_result.main(args)
        return json.loads((self.out / "2026-12-06-nvidia-h100-80gb-hbm3-0123456789-distill.json")
                          .read_text())

    def test_record(self):
        r = self.write("--note", "a note")
        self.assertEqual(r["format"], "mil-distill-run/1")
        self.assertEqual(r["commit"], COMMIT)
        self.assertEqual(r["notes"], ["a note"])
        self.assertEqual(r["run"], {"seed": 0, "heldout": 4})
        self.assertEqual(r["labels"]["train"], {
            "prompts": 96, "answers": 90, "answer_tokens": 12000, "tokens_per_s": 6543.2,
            "skipped_too_long": 5, "skipped_empty": 1})
        self.assertEqual(r["labels"]["train.2"]["answer_tokens"], 12100)  # a second answer round
        self.assertEqual(r["labels"]["heldout"]["answers"], 4)
        self.assertEqual(r["labels"]["heldout"]["prompts"], 4)
        s = r["stages"]["stage1-attn50"]
        self.assertEqual(s["steps"], 60)
        self.assertEqual(s["tokens_seen"], 6000)
        self.assertEqual([p["step"] for p in s["curve"]], [0, 25, 50, 59])
        self.assertAlmostEqual(s["curve"][-1]["kl"], 5.0 - 59 / 20)
        # sorted: 3 x 1000, then 5003 .. 5059; the middle two are 5029 and 5030
        self.assertEqual(s["median_tokens_per_s"], 5029.5)
        self.assertEqual(s["layout"], "50%")
        self.assertEqual(s["heldout_before"],
                         {"ppl_ratio": 900.0, "kl": 11.0, "top1_agreement": 0.01, "tokens": 500})
        self.assertEqual(s["heldout_after"]["ppl_ratio"], 1.25)
        self.assertNotIn("model_ppl", s["heldout_after"])
        self.assertEqual(s["heldout_curve"], [
            {"step": 20, "tokens_seen": 2000, "ppl_ratio": 1.8, "kl": 1.0, "top1_agreement": 0.5,
             "tokens": 500},
            {"step": 40, "tokens_seen": 4000, "ppl_ratio": 1.6, "kl": 1.0, "top1_agreement": 0.5,
             "tokens": 500}])

    def test_heldout_curve_from_the_printed_log(self):
        # No heldout.jsonl came back: the printed evaluations stand in, after the metrics row whose
        # tokens_seen (100 * (index + 1)) is the printed count, i.e. at steps done = index + 1;
        # a point printed twice (a resumed run) is kept once.
        (self.run / "stage1-attn50" / "heldout.jsonl").unlink()
        printed = self.tmp / "stage1.log"
        printed.write_text("stage 1 [###...] 5/60\n"
                           "held-out at 1200 tokens: ppl ratio 1.500 | KL 0.600 | top-1 agreement "
                           "70.5% (500 tokens)\n"
                           "held-out at 3000 tokens: ppl ratio 1.300 | KL 0.400 | top-1 agreement "
                           "80.0% (500 tokens)\n"
                           "held-out at 3000 tokens: ppl ratio 1.250 | KL 0.400 | top-1 agreement "
                           "80.0% (500 tokens)\n")
        r = self.write("--heldout-log", f"stage1-attn50={printed}")
        curve = r["stages"]["stage1-attn50"]["heldout_curve"]
        self.assertEqual([(p["step"], p["tokens_seen"], p["from"]) for p in curve],
                         [(12, 1200, "log"), (30, 3000, "log")])
        self.assertEqual(curve[1]["ppl_ratio"], 1.25)  # the later print of the repeated point
        self.assertEqual(curve[0]["ppl_ratio"], 1.5)
        self.assertEqual(curve[0]["kl"], 0.6)
        self.assertAlmostEqual(curve[0]["top1_agreement"], 0.705)
        self.assertEqual(curve[1]["tokens"], 500)
        # A printed count that matches no step belongs to another run: refused.
        printed.write_text("held-out at 1250 tokens: ppl ratio 1.500 | KL 0.600 | top-1 agreement "
                           "70.5% (500 tokens)\n")
        with self.assertRaises(SystemExit):
            self.write("--tag", "distill-2", "--heldout-log", f"stage1-attn50={printed}")
        with self.assertRaises(SystemExit):  # no STAGE=
            self.write("--tag", "distill-3", "--heldout-log", str(printed))
        with self.assertRaises(SystemExit):  # a stage with no folder
            self.write("--tag", "distill-4", "--heldout-log", f"stage1-attn25={printed}")

    def test_never_overwrites(self):
        self.write()
        with self.assertRaises(SystemExit):
            self.write()
        self.write("--tag", "distill-2")  # a tag of its own is fine
        self.assertTrue((self.out / "2026-12-06-nvidia-h100-80gb-hbm3-0123456789-distill-2.json")
                        .exists())

    def test_refuses_repeated_steps(self):
        # A resume that appended instead of truncating would count steps twice.
        path = self.run / "stage1-attn50" / "metrics.jsonl"
        path.write_text(path.read_text() + json.dumps(metrics_row(59, 5000.0)) + "\n")
        with self.assertRaises(SystemExit):
            self.write()

    def test_refuses_short_commit(self):
        with self.assertRaises(SystemExit):
            distill_result.main(["--run", str(self.run), "--commit", COMMIT[:10],
                                 "--device-name", "x", "--driver", "1", "--command", "c",
                                 "--out-dir", str(self.out)])


if __name__ == "__main__":
    unittest.main()
