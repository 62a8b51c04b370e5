#!/usr/bin/env python3
"""Golden outputs of llama.cpp for the teacher, an independent implementation to check mil against.

Runs models/SmolLM2-135M-Instruct.Q4_1.gguf through llama.cpp (the llama-cpp-python binding) and
writes tests/nn/golden/smollm2_llamacpp.json (committed), which tests/nn/test_teacher_oracle.cpp
compares with mil's tokenizer, forward and greedy decoding of the same file:
  tokens  llama.cpp's token ids (add_bos=False, special=True) for the strings of
          scripts/make_tokenizer_golden.py (code, digits, emoji, CJK, whitespace, chat markup,
          ill-formed UTF-8). For ill-formed input llama.cpp's repair differs from mil's (which is
          Python's bytes.decode("utf-8", "replace")), so those cases also carry the ids llama.cpp
          gives for the Python-repaired text ("ids_repaired"); where llama.cpp aborts on the raw
          bytes, "ids" is null and "llamacpp_error" says why.
  logits  per prompt and position: the argmax, the top-32 (id, logit) pairs and the log-sum-exp
          over the whole vocabulary (full rows would be 49152 floats each).
  greedy  64-token greedy continuations (argmax of llama.cpp's logits, no penalties; ends at EOS),
          with llama.cpp's top-1 minus top-2 logit margin at each step.
Logits and greedy runs are made twice ("runs"):
  q4_1    the file as it is. llama.cpp multiplies Q4_1 (and Q8_0) weights with activations it
          quantises to Q8_1 (Q8_0), 8 bits per value with one scale per 32; that moves logits by
          up to ~2 on these prompts, so near-ties can flip.
  f32     the same weights converted to F32 by llama.cpp itself (llama_model_quantize with
          LLAMA_FTYPE_ALL_F32; checked bit-identical to gguf's dequantisation, which is what mil
          loads). llama.cpp then computes in float throughout, like mil: the tight oracle.
Both run on the CPU with an f32 KV cache and without flash attention.

  CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_OPENMP=OFF" CMAKE_BUILD_PARALLEL_LEVEL=1 \
    pip install llama-cpp-python==0.3.36 gguf==0.19.0 numpy tokenizers==0.23.3
  python3 scripts/make_llamacpp_golden.py
(tokenizers only because make_tokenizer_golden.py, whose input list is reused, imports it.)
"""
import ctypes
import json
import pathlib
import subprocess
import sys
import tempfile

import llama_cpp
import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
from make_tokenizer_golden import inputs  # noqa: E402

GGUF = ROOT / "models/SmolLM2-135M-Instruct.Q4_1.gguf"
GOLDEN = ROOT / "tests/nn/golden/smollm2_llamacpp.json"
LLAMA_CPP_COMMIT = "0c1e57098"  # vendored by llama-cpp-python 0.3.36 (its CHANGELOG)
TOP_K = 32
NEW_TOKENS = 64
GGML_TYPE_F32 = 0


def metadata():
    r = GGUFReader(str(GGUF))

    def scalar(key):
        f = r.fields[key]
        if f.types[0].name == "STRING":
            return bytes(f.parts[-1]).decode("utf-8")
        return f.parts[-1].tolist()[0]

    return {"add_bos": bool(scalar("tokenizer.ggml.add_bos_token")),
            "eos": int(scalar("tokenizer.ggml.eos_token_id")),
            "template": scalar("tokenizer.chat_template")}


def default_system(template):
    # The chatml template writes this system message when the conversation has none.
    head = "<|im_start|>system\n"
    start = template.index(head) + len(head)
    return template[start:template.index("<|im_end|>", start)]


def chat(user, system=None):
    s = f"<|im_start|>system\n{system}<|im_end|>\n" if system is not None else ""
    return s + f"<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"


LONG = ("The lighthouse keeper climbed the spiral stairs every evening at dusk, counting the one "
        "hundred and twelve steps as his father had taught him. From the lamp room he could see "
        "the whole bay: the fishing boats returning with their nets, the gulls circling above "
        "the harbour, and the dark line of the storm that had been gathering over the western "
        "hills since noon. He trimmed the wick, polished the great lens, and waited for the "
        "first ships to")


def logit_prompts(system):
    return [
        ("chat_system", chat("What is the capital of France? Answer in one word.", system)),
        ("code", "def fibonacci(n):\n    if n < 2:\n        return n\n    return fibonacci(n - 1) "
                 "+ fibonacci(n - 2)\n\nfor i in range(10):\n    print("),
        ("prose", "The history of the Roman Empire spans more than a thousand years, from"),
        ("digits", "Compute: 12 + 35 = 47, 128 * 4 = 512, 2024 - 1999 = 25, and 7 * 8 ="),
        ("mixed", "Le chat est sur la table. 日本語では: 猫はテーブルの上にいます。 😀 Ça va?"),
        ("long", LONG),
    ]


def greedy_prompts(system):
    return [
        ("chat_france", chat("What is the capital of France? Answer in one word.")),
        ("chat_france_system", chat("What is the capital of France? Answer in one word.", system)),
        ("chat_haiku", chat("Write a haiku about autumn leaves.")),
        ("code", "def is_prime(n):\n"),
        ("prose", "Once upon a time, in a small village by the sea,"),
        ("digits", "1, 2, 3, 5, 8, 13,"),
    ]


def tokenize(llm, raw):
    return llm.tokenize(raw, add_bos=False, special=True)


# llama.cpp 0c1e57098 aborts the whole process (an uncaught std::invalid_argument, "invalid
# codepoint") on bytes that decode to a code point above U+10FFFF (e.g. F4 90 80 80), so
# ill-formed input is tokenized in a child process.
CHILD = """
import sys, llama_cpp
llm = llama_cpp.Llama(model_path=sys.argv[1], vocab_only=True, verbose=False)
print(llm.tokenize(bytes.fromhex(sys.argv[2]), add_bos=False, special=True))
"""


def tokenize_isolated(raw):
    r = subprocess.run([sys.executable, "-c", CHILD, str(GGUF), raw.hex()], capture_output=True,
                       text=True)
    if r.returncode != 0:
        last = (r.stderr.strip().splitlines() or ["?"])[-1].strip()
        return None, f"llama.cpp aborts (exit {r.returncode}): {last}"
    return json.loads(r.stdout), None


def position_record(row):
    row64 = row.astype(np.float64)
    m = row64.max()
    top = np.argsort(-row, kind="stable")[:TOP_K]  # ties: smaller id first, like mil's argmax
    return int(np.argmax(row)), float(m + np.log(np.exp(row64 - m).sum())), \
        [[int(i), round(float(row[i]), 6)] for i in top]


def open_model(path):
    return llama_cpp.Llama(model_path=str(path), n_ctx=512, n_batch=512, n_threads=2, seed=1234,
                           logits_all=True, type_k=GGML_TYPE_F32, type_v=GGML_TYPE_F32,
                           flash_attn=False, verbose=False)


def logits_run(llm, prompts):
    out = []
    for name, text in prompts:
        ids = tokenize(llm, text.encode("utf-8"))
        llm.reset()
        llm.eval(ids)
        rec = {"name": name, "text": text, "ids": ids, "argmax": [], "lse": [], "top": []}
        for row in np.array(llm.scores[:len(ids)], dtype=np.float32):
            a, lse, top = position_record(row)
            rec["argmax"].append(a)
            rec["lse"].append(round(lse, 6))
            rec["top"].append(top)
        out.append(rec)
    return out


def greedy_run(llm, prompts, eos):
    """Argmax decoding with llama.cpp's KV cache: the prompt in one batch, then token by token."""
    out = []
    for name, text in prompts:
        ids = tokenize(llm, text.encode("utf-8"))
        llm.reset()
        llm.eval(ids)
        gen, margins, stopped = [], [], False
        while len(gen) < NEW_TOKENS:
            row = np.array(llm.scores[llm.n_tokens - 1], dtype=np.float32)
            two = np.argsort(-row, kind="stable")[:2]
            margins.append(round(float(row[two[0]] - row[two[1]]), 6))
            gen.append(int(two[0]))
            if gen[-1] == eos:
                stopped = True
                break
            llm.eval([gen[-1]])
        out.append({"name": name, "text": text, "prompt_ids": ids, "generated": gen,
                    "stopped_at_eos": stopped, "margins": margins,
                    "generated_text": llm.detokenize(gen).decode("utf-8", errors="replace")})
    return out


def dequantized_copy(dst):
    """The teacher with every tensor converted to F32 by llama.cpp itself; checked to hold exactly
    the values of gguf's (and so mil's) dequantisation of the Q4_1/Q8_0 file."""
    p = llama_cpp.llama_model_quantize_default_params()
    p.ftype = llama_cpp.LLAMA_FTYPE_ALL_F32
    p.allow_requantize = True
    p.nthread = 2
    assert llama_cpp.llama_model_quantize(str(GGUF).encode(), str(dst).encode(),
                                          ctypes.byref(p)) == 0
    f32 = {t.name: t for t in GGUFReader(str(dst)).tensors}
    for t in GGUFReader(str(GGUF)).tensors:
        a = dequantize(t.data, t.tensor_type).astype(np.float32).ravel()
        b = np.asarray(f32[t.name].data).ravel()
        assert f32[t.name].tensor_type.name == "F32" and np.array_equal(a, b), t.name


def main():
    meta = metadata()
    assert meta["add_bos"] is False, "SmolLM2's GGUF should not add BOS"
    eos = meta["eos"]
    system = default_system(meta["template"])
    llm = open_model(GGUF)

    tokens = []
    for raw in inputs():
        try:
            raw.decode("utf-8")
            tokens.append({"hex": raw.hex(), "ids": tokenize(llm, raw)})
            continue
        except UnicodeDecodeError:
            pass
        ids, error = tokenize_isolated(raw)
        case = {"hex": raw.hex(), "ids": ids}
        if error:
            case["llamacpp_error"] = error
        repaired = raw.decode("utf-8", errors="replace").encode("utf-8")
        case["ids_repaired"] = tokenize(llm, repaired)
        tokens.append(case)

    runs = {"q4_1": {"weights": "the file as it is (Q4_1, token_embd Q8_0)",
                     "logits": logits_run(llm, logit_prompts(system)),
                     "greedy": greedy_run(llm, greedy_prompts(system), eos)}}
    del llm
    with tempfile.TemporaryDirectory() as tmp:
        path = pathlib.Path(tmp) / "teacher_f32.gguf"
        dequantized_copy(path)
        llm = open_model(path)
        runs["f32"] = {"weights": "every tensor dequantised to F32 by llama_model_quantize "
                                  "(LLAMA_FTYPE_ALL_F32), bit-identical to gguf.quants.dequantize",
                       "logits": logits_run(llm, logit_prompts(system)),
                       "greedy": greedy_run(llm, greedy_prompts(system), eos)}
        del llm

    GOLDEN.parent.mkdir(parents=True, exist_ok=True)
    GOLDEN.write_text(json.dumps({
        "source": f"scripts/make_llamacpp_golden.py: llama-cpp-python {llama_cpp.__version__} "
                  f"(llama.cpp {LLAMA_CPP_COMMIT}, CPU, f32 KV cache, no flash attention, "
                  "2 threads) on models/SmolLM2-135M-Instruct.Q4_1.gguf; runs: q4_1 = the file, "
                  "f32 = its weights converted to F32 by llama.cpp",
        "llama_cpp_python": llama_cpp.__version__, "llama_cpp_commit": LLAMA_CPP_COMMIT,
        "add_bos": False, "parse_special": True, "eos": eos, "top_k": TOP_K,
        "new_tokens": NEW_TOKENS, "tokens": tokens, "runs": runs},
        ensure_ascii=False, separators=(",", ":")) + "\n")
    n_bad = sum("ids_repaired" in c for c in tokens)
    n_diff = sum("ids_repaired" in c and c["ids"] not in (None, c["ids_repaired"]) for c in tokens)
    n_abort = sum("llamacpp_error" in c for c in tokens)
    print(f"wrote {GOLDEN}: {len(tokens)} strings ({n_bad} ill-formed UTF-8; llama.cpp's own "
          f"repair differs from Python's on {n_diff} and aborts on {n_abort})")
    for key, run in runs.items():
        n_pos = sum(len(r["ids"]) for r in run["logits"])
        print(f"{key}: {n_pos} logit positions over {len(run['logits'])} prompts")
        for g in run["greedy"]:
            print(f"  {g['name']}: {len(g['generated'])} tokens, eos={g['stopped_at_eos']}, min "
                  f"margin {min(g['margins']):.4f}: {g['generated_text']!r}")


if __name__ == "__main__":
    main()
