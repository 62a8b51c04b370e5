#!/usr/bin/env python3
"""Tiny Hugging Face checkpoints written by Python, and their logits from an independent numpy
implementation of transformers' Llama/Qwen2 forward, for tests/nn/test_llama_hf.cpp.
Tested with transformers==5.23.0 (no torch needed), safetensors==0.8.0, numpy 2.4:
pip install transformers safetensors numpy.

  scripts/make_llama_hf_golden.py     writes tests/nn/golden/hf_tiny_{llama,qwen2}/ and
                                      tests/nn/golden/hf_tiny_logits.json

- hf_tiny_llama: LlamaForCausalLM, GQA, tied embeddings, Llama-3.1 RoPE scaling, BF16 weights
  in one model.safetensors;
- hf_tiny_qwen2: Qwen2ForCausalLM (q/k/v biases), untied, F16 weights in two shards + index.
config.json is written by transformers' own config classes (save_pretrained). The weights are
random (seeded); the forward below follows transformers' modeling code (RMSNorm, rotate_half
RoPE with the llama3 frequency rule, causal GQA softmax attention, SwiGLU) in float64.
"""
import json
import math
import os

import numpy as np
import safetensors
import transformers
from safetensors.numpy import save_file

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(REPO, "tests", "nn", "golden")
IDS = [3, 17, 0, 23, 5, 5, 11, 20, 9]


def bf16_round(a):  # float32 -> bf16 bits, round to nearest even
    u = a.astype(np.float32).view(np.uint32).astype(np.uint64)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)


def weights(cfg, rng, bias):
    d, nh, nkv, hd, ff, V = (cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads,
                             cfg.head_dim, cfg.intermediate_size, cfg.vocab_size)
    n = lambda *s: (0.5 * rng.standard_normal(s)).astype(np.float32)
    g = lambda k: (1 + 0.1 * rng.standard_normal(k)).astype(np.float32)
    w = {"model.embed_tokens.weight": n(V, d)}
    for l in range(cfg.num_hidden_layers):
        p = f"model.layers.{l}."
        w[p + "input_layernorm.weight"] = g(d)
        w[p + "self_attn.q_proj.weight"] = n(nh * hd, d)
        w[p + "self_attn.k_proj.weight"] = n(nkv * hd, d)
        w[p + "self_attn.v_proj.weight"] = n(nkv * hd, d)
        if bias:
            w[p + "self_attn.q_proj.bias"] = n(nh * hd)
            w[p + "self_attn.k_proj.bias"] = n(nkv * hd)
            w[p + "self_attn.v_proj.bias"] = n(nkv * hd)
        w[p + "self_attn.o_proj.weight"] = n(d, nh * hd)
        w[p + "post_attention_layernorm.weight"] = g(d)
        w[p + "mlp.gate_proj.weight"] = n(ff, d)
        w[p + "mlp.up_proj.weight"] = n(ff, d)
        w[p + "mlp.down_proj.weight"] = n(d, ff)
    w["model.norm.weight"] = g(d)
    if not cfg.tie_word_embeddings:
        w["lm_head.weight"] = n(V, d)
    return w


def forward(cfg, w, ids):
    nh, nkv, hd = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    rp = cfg.rope_parameters
    inv = 1.0 / (rp["rope_theta"] ** (np.arange(0, hd, 2, dtype=np.float64) / hd))
    if rp["rope_type"] == "llama3":
        f, lo, hi = rp["factor"], rp["low_freq_factor"], rp["high_freq_factor"]
        old = rp["original_max_position_embeddings"]
        wl = 2 * math.pi / inv
        scaled = np.where(wl > old / lo, inv / f, inv)
        s = (old / wl - lo) / (hi - lo)
        medium = ~(wl < old / hi) & ~(wl > old / lo)
        inv = np.where(medium, (1 - s) * scaled / f + s * scaled, scaled)
    T = len(ids)
    fr = np.outer(np.arange(T), inv)
    emb = np.concatenate([fr, fr], -1)
    cos, sin = np.cos(emb)[:, None, :], np.sin(emb)[:, None, :]
    rot = lambda x: np.concatenate([-x[..., hd // 2:], x[..., :hd // 2]], -1)
    eps = cfg.rms_norm_eps
    rms = lambda x, g: g * (x / np.sqrt((x * x).mean(-1, keepdims=True) + eps))
    W = {k: v.astype(np.float64) for k, v in w.items()}
    x = W["model.embed_tokens.weight"][ids]
    mask = np.tril(np.ones((T, T))) > 0
    for l in range(cfg.num_hidden_layers):
        p = f"model.layers.{l}.self_attn."
        h = rms(x, W[f"model.layers.{l}.input_layernorm.weight"])
        q, k, v = (h @ W[p + f"{n}_proj.weight"].T + W.get(p + f"{n}_proj.bias", 0.0)
                   for n in "qkv")
        q, k, v = q.reshape(T, nh, hd), k.reshape(T, nkv, hd), v.reshape(T, nkv, hd)
        q, k = q * cos + rot(q) * sin, k * cos + rot(k) * sin
        out = np.zeros((T, nh, hd))
        for i in range(nh):
            j = i // (nh // nkv)
            s = np.where(mask, q[:, i] @ k[:, j].T / math.sqrt(hd), -np.inf)
            s = np.exp(s - s.max(-1, keepdims=True))
            out[:, i] = (s / s.sum(-1, keepdims=True)) @ v[:, j]
        x = x + out.reshape(T, nh * hd) @ W[p + "o_proj.weight"].T
        p = f"model.layers.{l}."
        h = rms(x, W[p + "post_attention_layernorm.weight"])
        gate, up = h @ W[p + "mlp.gate_proj.weight"].T, h @ W[p + "mlp.up_proj.weight"].T
        x = x + (gate / (1 + np.exp(-gate)) * up) @ W[p + "mlp.down_proj.weight"].T
    x = rms(x, W["model.norm.weight"])
    head = W["model.embed_tokens.weight" if cfg.tie_word_embeddings else "lm_head.weight"]
    return x @ head.T


def main():
    rng = np.random.default_rng(2024)
    common = dict(vocab_size=24, hidden_size=16, intermediate_size=16, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, head_dim=4, rms_norm_eps=1e-5,
                  max_position_embeddings=64, bos_token_id=1, eos_token_id=2)
    llama = transformers.LlamaConfig(
        **common, tie_word_embeddings=True,
        rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                         "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                         "original_max_position_embeddings": 16})
    qwen2 = transformers.Qwen2Config(**common, tie_word_embeddings=False,
                                     rope_parameters={"rope_type": "default",
                                                      "rope_theta": 10000.0})
    logits = {}
    for name, cfg, bias in [("llama", llama, False), ("qwen2", qwen2, True)]:
        d = os.path.join(OUT, f"hf_tiny_{name}")
        os.makedirs(d, exist_ok=True)
        cfg.save_pretrained(d)
        w = weights(cfg, rng, bias)
        if name == "llama":  # BF16 through the byte-level API (numpy has no bfloat16)
            bits = {k: bf16_round(v) for k, v in w.items()}
            w = {k: (b.astype(np.uint32) << 16).view(np.float32) for k, b in bits.items()}
            specs = {k: safetensors.TensorSpec(dtype="bfloat16", shape=list(b.shape),
                                               data_ptr=b.ctypes.data, data_len=b.nbytes)
                     for k, b in bits.items()}
            safetensors.serialize_file(specs, os.path.join(d, "model.safetensors"),
                                       metadata={"format": "pt"})
        else:  # F16, two shards and an index as transformers writes them
            w = {k: v.astype(np.float16) for k, v in w.items()}
            names = list(w)
            shards = [names[: len(names) // 2], names[len(names) // 2:]]
            wm = {}
            for i, part in enumerate(shards):
                fn = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
                save_file({k: w[k] for k in part}, os.path.join(d, fn), metadata={"format": "pt"})
                wm.update({k: fn for k in part})
            total = sum(v.nbytes for v in w.values())
            with open(os.path.join(d, "model.safetensors.index.json"), "w") as f:
                json.dump({"metadata": {"total_size": total}, "weight_map": wm}, f, indent=2,
                          sort_keys=True)
        out = forward(cfg, w, IDS)
        logits[name] = [round(float(x), 9) for x in out.reshape(-1)]
    with open(os.path.join(OUT, "hf_tiny_logits.json"), "w") as f:
        json.dump({"ids": IDS, "note": "numpy float64 forward of scripts/make_llama_hf_golden.py",
                   "transformers": transformers.__version__,
                   "safetensors": safetensors.__version__, **logits}, f)
    print(f"wrote {OUT}/hf_tiny_llama, hf_tiny_qwen2, hf_tiny_logits.json")


if __name__ == "__main__":
    main()
