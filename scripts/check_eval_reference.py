#!/usr/bin/env python3
"""Checks mil-eval against an independent computation on a few prompts (not run in CI).

  pip install torch "transformers==4.46.*" gguf numpy accelerate
  scripts/check_eval_reference.py --mil-eval build/cpu/examples/mil-eval \\
      --teacher models/SmolLM2-135M-Instruct.Q4_1.gguf --model HYBRID_DIR

1. The teacher runs in transformers (which reads the GGUF file itself and dequantises it; its
   loader leaves the output head untied, so it is tied back to the embeddings here). Its greedy
   answers to a few chat prompts, rendered by transformers' own chat template code, make the
   held-out sequences (prompt + answer token ids).
2. mil-eval scores the model on those sequences (--sequences) and answers the same prompts.
3. The same metrics are computed here, in float64: the teacher's logits from transformers; the
   model's from scripts/check_hybrid_reference.py (a numpy implementation of the reference
   MambaInLlama forward) for a hybrid folder, or from transformers for a GGUF file or a Hugging
   Face folder. Over answer positions (position t counts when token t + 1 is an answer token):
   perplexity exp(mean NLL), the ratio model / teacher, mean KL(p_teacher || p_model), top-1
   agreement.
4. The figures must agree (relative 1e-4 for perplexities, absolute 1e-4 for KL, top-1 within one
   position per sequence, where near-ties may flip), and mil-eval's greedy teacher answers must be
   the ones transformers gives. Exit status 0 when everything agrees.

A run (SmolLM2-135M-Instruct Q4_1 teacher; a hybrid from mil-convert with layers 10, 20 and 25
converted to Mamba-2, not distilled; 3 prompts, 71 answer tokens): every figure agreed within
7e-7 (relative) and all three greedy teacher answers were identical.
"""
import argparse
import json
import math
import os
import subprocess
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import check_hybrid_reference  # noqa: E402

PROMPTS = [
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "Give three tips for staying focused while studying.",
]


def load_transformers(path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if os.path.isdir(path):
        model = AutoModelForCausalLM.from_pretrained(path, torch_dtype=torch.float32)
        tok = AutoTokenizer.from_pretrained(path)
    else:
        folder, name = os.path.split(os.path.abspath(path))
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, torch_dtype=torch.float32)
        tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        # The GGUF loader leaves lm_head as a separate, untrained-looking copy when the file
        # stores no output.weight (tied embeddings): tie it back.
        if getattr(model.config, "tie_word_embeddings", False) or "output.weight" not in gguf_tensor_names(path):
            model.lm_head.weight = model.model.embed_tokens.weight
    return model.double().eval(), tok


def gguf_tensor_names(path):
    from gguf import GGUFReader

    return {t.name for t in GGUFReader(path).tensors}


def torch_logits(model, ids):
    import torch

    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].double().numpy()


def model_logits_fn(path):
    if os.path.isdir(path) and os.path.exists(os.path.join(path, "mamba_config.json")):
        return lambda ids: check_hybrid_reference.forward(path, ids)
    model, _ = load_transformers(path)
    return lambda ids: torch_logits(model, ids)


def greedy(logits_fn, ids, max_new, stops):
    out = []
    for _ in range(max_new):
        nxt = int(np.argmax(logits_fn(ids + out)[-1]))
        if nxt in stops:
            break
        out.append(nxt)
    return out


def log_softmax(x):
    m = x.max(-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


def metrics(seqs, teacher_fn, model_fn):
    t_nll = m_nll = kl = 0.0
    agree, tokens, per_seq_pos = 0, 0, []
    for s in seqs:
        ids, p = s["tokens"], s["prompt_len"]
        lt, lm = log_softmax(teacher_fn(ids)), log_softmax(model_fn(ids))
        rows = range(max(p, 1) - 1, len(ids) - 1)
        per_seq_pos.append(len(rows))
        for t in rows:
            y = ids[t + 1]
            t_nll -= lt[t, y]
            m_nll -= lm[t, y]
            kl += float((np.exp(lt[t]) * (lt[t] - lm[t])).sum())
            agree += int(np.argmax(lt[t]) == np.argmax(lm[t]))
            tokens += 1
    return {
        "teacher_ppl": math.exp(t_nll / tokens),
        "model_ppl": math.exp(m_nll / tokens),
        "ratio": math.exp((m_nll - t_nll) / tokens),
        "kl": kl / tokens,
        "top1": agree / tokens,
        "tokens": tokens,
        "sequences": len(seqs),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mil-eval", required=True, help="the mil-eval program")
    ap.add_argument("--teacher", required=True, help="teacher GGUF file (or Hugging Face folder)")
    ap.add_argument("--model", required=True, help="hybrid folder, GGUF file or Hugging Face folder")
    ap.add_argument("--answer-tokens", type=int, default=32)
    ap.add_argument("--keep", help="keep mil-eval's sequences and JSON in this folder")
    a = ap.parse_args()

    teacher, tok = load_transformers(a.teacher)
    teacher_fn = lambda ids: torch_logits(teacher, ids)  # noqa: E731
    stops = {tok.eos_token_id}
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    if isinstance(im_end, int) and im_end >= 0:
        stops.add(im_end)

    seqs, teacher_answers = [], []
    for p in PROMPTS:
        ids = tok.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True)
        ans = greedy(teacher_fn, ids, a.answer_tokens, stops)
        seqs.append({"tokens": ids + ans, "prompt_len": len(ids)})
        teacher_answers.append(tok.decode(ans, skip_special_tokens=True))

    work = a.keep or tempfile.mkdtemp(prefix="mil_eval_check_")
    os.makedirs(work, exist_ok=True)
    seq_path, out_path = os.path.join(work, "sequences.json"), os.path.join(work, "eval.json")
    with open(seq_path, "w") as f:
        json.dump(seqs, f)
    cmd = [a.mil_eval, "--teacher", a.teacher, "-m", a.model, "--sequences", seq_path,
           "--passkey-trials", "0", "--answer-tokens", str(a.answer_tokens), "--json", out_path,
           "--device", "cpu"]
    for p in PROMPTS:
        cmd += ["--prompts", p]
    subprocess.run(cmd, check=True)
    with open(out_path) as f:
        mil = json.load(f)

    ref = metrics(seqs, teacher_fn, model_logits_fn(a.model))
    m, t = mil["models"][0], mil["teacher"]
    rows = [
        ("teacher perplexity", t["perplexity"], ref["teacher_ppl"], 1e-4, True),
        ("model perplexity", m["perplexity"], ref["model_ppl"], 1e-4, True),
        ("perplexity ratio", m["perplexity_ratio"], ref["ratio"], 1e-4, True),
        ("KL(teacher || model)", m["kl"], ref["kl"], 1e-4, False),
        ("top-1 agreement", m["top1_agreement"], ref["top1"], len(seqs) / ref["tokens"], False),
        ("answer tokens", m["answer_tokens"], ref["tokens"], 0, False),
    ]
    ok = True
    print(f"\n{'metric':24} {'mil-eval':>12} {'reference':>12}  agrees")
    for name, got, want, tol, relative in rows:
        err = abs(got - want) / (abs(want) if relative else 1.0)
        good = err <= tol
        ok &= good
        print(f"{name:24} {got:12.6f} {want:12.6f}  {'yes' if good else 'NO'} (error {err:.2g})")

    print("\ngreedy teacher answers (mil-eval vs transformers):")
    for p, ref_text, got in zip(PROMPTS, teacher_answers, mil["answers"]):
        same = got["teacher"] == ref_text
        ok &= same
        print(f"  {'same' if same else 'DIFFERENT'}: {p!r}\n    mil: {got['teacher']!r}\n    ref: {ref_text!r}")
    print("\nall agree" if ok else "\nMISMATCH")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
