#!/usr/bin/env python3
"""Golden files for mil's GGUF reader and dequantisation, made with the `gguf` package of PyPI
(llama.cpp's own Python reader; tested with gguf==0.19.0: pip install gguf==0.19.0).

  scripts/make_gguf_golden.py [path/to/SmolLM2-135M-Instruct.Q4_1.gguf]

writes
  tests/io/golden/smollm2_gguf_golden.json: the metadata summary of the teacher GGUF and, for a
      few tensors of each type in it (F32, Q8_0, Q4_1), the first 64 dequantised values and the
      sums of a few rows (in float64);
  tests/io/golden/dequant_golden.json: for every type mil dequantises, random blocks (hex) with
      sane fp16 scales and their values as dequantised by gguf.quants.
"""
import importlib.metadata
import json
import os
import sys

import numpy as np
import gguf
from gguf import GGMLQuantizationType as Q
from gguf.quants import dequantize

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(REPO, "tests", "io", "golden")


def teacher_golden(path):
    r = gguf.GGUFReader(path)

    def field(key):
        return r.fields[key].contents()

    meta = {
        "version": int(field("GGUF.version")),
        "tensor_count": len(r.tensors),
        "kv_count": len(r.fields) - 3,  # GGUF.version/tensor_count/kv_count are pseudo-fields
        "alignment": int(r.alignment),
        "data_offset": int(r.data_offset),
        "general.architecture": field("general.architecture"),
        "general.name": field("general.name"),
        "llama.block_count": int(field("llama.block_count")),
        "llama.embedding_length": int(field("llama.embedding_length")),
        "llama.feed_forward_length": int(field("llama.feed_forward_length")),
        "llama.attention.head_count": int(field("llama.attention.head_count")),
        "llama.attention.head_count_kv": int(field("llama.attention.head_count_kv")),
        "llama.rope.freq_base": float(field("llama.rope.freq_base")),
        "llama.attention.layer_norm_rms_epsilon": float(field("llama.attention.layer_norm_rms_epsilon")),
        "tokenizer.ggml.tokens.count": len(field("tokenizer.ggml.tokens")),
        "tokenizer.ggml.tokens.first": field("tokenizer.ggml.tokens")[:8],
        "tokenizer.ggml.merges.count": len(field("tokenizer.ggml.merges")),
        "tokenizer.ggml.token_type.first": [int(x) for x in field("tokenizer.ggml.token_type")[:8]],
        "tokenizer.ggml.bos_token_id": int(field("tokenizer.ggml.bos_token_id")),
        "tokenizer.ggml.eos_token_id": int(field("tokenizer.ggml.eos_token_id")),
    }
    wanted = ["token_embd.weight", "blk.0.attn_norm.weight", "blk.0.attn_q.weight",
              "blk.0.ffn_down.weight", "blk.29.attn_k.weight", "output_norm.weight"]
    tensors = []
    by_name = {t.name: t for t in r.tensors}
    for name in wanted:
        t = by_name[name]
        ne = [int(x) for x in t.shape]
        values = dequantize(t.data, t.tensor_type).reshape(-1, ne[0]).astype(np.float64)
        rows = sorted(i for i in {0, 1, values.shape[0] // 2, values.shape[0] - 1} if i < values.shape[0])
        tensors.append({
            "name": name, "type": t.tensor_type.name, "shape": ne,
            "offset": int(t.data_offset) - int(r.data_offset), "n_bytes": int(t.n_bytes),
            "first64": [float(x) for x in values.reshape(-1)[:64]],
            "rows": rows, "row_sums": [float(values[i].sum()) for i in rows],
        })
    type_counts = {}
    for t in r.tensors:
        type_counts[t.tensor_type.name] = type_counts.get(t.tensor_type.name, 0) + 1
    meta["tensor_types"] = type_counts
    return {"file": os.path.basename(path), "metadata": meta, "tensors": tensors}


# Byte offsets of the fp16 scale fields of one block of each type (set to sane random values so
# the golden values are finite).
SCALE_FIELDS = {Q.Q4_0: [0], Q.Q4_1: [0, 2], Q.Q5_0: [0], Q.Q5_1: [0, 2], Q.Q8_0: [0],
                Q.Q4_K: [0, 2], Q.Q5_K: [0, 2], Q.Q6_K: [208]}


def dequant_golden():
    rng = np.random.default_rng(20240617)
    out = []
    for qt in [Q.F32, Q.F16, Q.BF16, Q.Q8_0, Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1, Q.Q4_K, Q.Q5_K, Q.Q6_K]:
        block, nbytes = gguf.GGML_QUANT_SIZES[qt]
        n_blocks = 2 if block == 32 else 1
        n = block * n_blocks if block > 1 else 48
        if qt == Q.F32:
            raw = rng.uniform(-3, 3, n).astype(np.float32).view(np.uint8)
        elif qt == Q.F16:
            raw = rng.uniform(-3, 3, n).astype(np.float16).view(np.uint8)
        elif qt == Q.BF16:
            raw = (rng.uniform(-3, 3, n).astype(np.float32).view(np.uint32) >> 16).astype(np.uint16).view(np.uint8)
        else:
            raw = rng.integers(0, 256, nbytes * n_blocks, dtype=np.uint8)
            for b in range(n_blocks):
                for off in SCALE_FIELDS[qt]:
                    s = np.array([rng.uniform(-0.1, 0.1)], dtype=np.float16).view(np.uint8)
                    raw[b * nbytes + off: b * nbytes + off + 2] = s
        values = dequantize(raw.copy(), qt).reshape(-1)
        assert values.size == n and np.all(np.isfinite(values))
        out.append({"type": qt.name, "n": n, "hex": raw.tobytes().hex(),
                    "values": [float(x) for x in values]})
    return {"made_with": f"gguf {importlib.metadata.version('gguf')} gguf.quants.dequantize",
            "cases": out}


def main():
    os.makedirs(OUT, exist_ok=True)
    model = sys.argv[1] if len(sys.argv) > 1 else os.path.join(REPO, "models", "SmolLM2-135M-Instruct.Q4_1.gguf")
    with open(os.path.join(OUT, "dequant_golden.json"), "w") as f:
        json.dump(dequant_golden(), f, ensure_ascii=False)
    if os.path.exists(model):
        with open(os.path.join(OUT, "smollm2_gguf_golden.json"), "w") as f:
            json.dump(teacher_golden(model), f, ensure_ascii=False, indent=1)
    else:
        print(f"{model} not found: teacher golden file not written", file=sys.stderr)


if __name__ == "__main__":
    main()
