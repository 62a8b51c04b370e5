#!/usr/bin/env python3
"""Writes the seed corpora of the fuzz targets added after the first five (gguf_tokenizer,
safetensors_index, mamba_config, chat_template) and the count-limit seeds of gguf: small valid
inputs of each kind and a few broken ones. Run from anywhere; the files are committed, and
libFuzzer's crashing inputs are added next to them by hand.
  python3 fuzz/make_seeds.py
"""
import json
import os
import struct

CORPUS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")

# ---- GGUF ------------------------------------------------------------------------------------
U8, I8, U16, I16, U32, I32, F32, BOOL, STR, ARR, U64, I64, F64 = range(13)
SCALAR = {U8: "<B", I8: "<b", U16: "<H", I16: "<h", U32: "<I", I32: "<i", F32: "<f",
          BOOL: "<B", U64: "<Q", I64: "<q", F64: "<d"}


def gguf_str(s):
    b = s.encode() if isinstance(s, str) else s
    return struct.pack("<Q", len(b)) + b


def gguf_value(t, v):
    if t == STR:
        return gguf_str(v)
    if t == ARR:
        et, items = v
        out = struct.pack("<IQ", et, len(items))
        return out + b"".join(gguf_value(et, x) for x in items)
    return struct.pack(SCALAR[t], v)


def gguf(kvs, tensors=()):
    """kvs: [(key, type, value)]; tensors: [(name, dims, f32 values)] (ggml order)."""
    out = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(kvs))
    for k, t, v in kvs:
        out += gguf_str(k) + struct.pack("<I", t) + gguf_value(t, v)
    offset, blobs = 0, []
    for name, dims, values in tensors:
        out += gguf_str(name) + struct.pack("<I", len(dims)) + b"".join(struct.pack("<Q", d) for d in dims)
        out += struct.pack("<IQ", 0, offset)  # F32
        blob = struct.pack("<%df" % len(values), *values)
        blobs.append(blob + b"\0" * (-len(blob) % 32))
        offset += len(blobs[-1])
    if tensors:
        out += b"\0" * (-len(out) % 32)
    return out + b"".join(blobs)


def byte_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


def byte_level_kvs(pre, template):
    b2u = byte_to_unicode()
    tokens = [b2u[b] for b in range(256)] + ["ab", "\u0120a", "<|im_start|>", "<|im_end|>"]
    types = [1] * 258 + [3, 3]
    kvs = [("tokenizer.ggml.model", STR, "gpt2"), ("tokenizer.ggml.pre", STR, pre),
           ("tokenizer.ggml.tokens", ARR, (STR, tokens)),
           ("tokenizer.ggml.token_type", ARR, (I32, types)),
           ("tokenizer.ggml.merges", ARR, (STR, ["a b", "\u0120 a"])),
           ("tokenizer.ggml.bos_token_id", U32, 258), ("tokenizer.ggml.eos_token_id", U32, 259)]
    if template:
        kvs.append(("tokenizer.chat_template", STR, template))
    return kvs


def spm_kvs():
    tokens = ["<unk>", "<s>", "</s>"] + ["<0x%02X>" % b for b in range(256)] + ["\u2581", "a", "b", "ab", "\u2581a"]
    types = [2, 3, 3] + [6] * 256 + [1] * 5
    return [("tokenizer.ggml.model", STR, "llama"), ("tokenizer.ggml.tokens", ARR, (STR, tokens)),
            ("tokenizer.ggml.scores", ARR, (F32, [-float(i % 7) for i in range(len(tokens))])),
            ("tokenizer.ggml.token_type", ARR, (I32, types)),
            ("tokenizer.ggml.unknown_token_id", U32, 0), ("tokenizer.ggml.bos_token_id", U32, 1),
            ("tokenizer.ggml.eos_token_id", U32, 2), ("tokenizer.ggml.add_bos_token", BOOL, 1),
            ("tokenizer.chat_template", STR, "{{ bos_token }}[INST] <<SYS>> ... [/INST]")]


CHATML = "{% for m in messages %}<|im_start|>{{ m.role }}\\n{{ m.content }}<|im_end|>\\n{% endfor %}"


def write(folder, name, data):
    os.makedirs(os.path.join(CORPUS, folder), exist_ok=True)
    with open(os.path.join(CORPUS, folder, name), "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)


def gguf_tokenizer_seeds():
    write("gguf_tokenizer", "byte_level_chatml.gguf", gguf(byte_level_kvs("smollm", CHATML)))
    write("gguf_tokenizer", "byte_level_llama3.gguf", gguf(byte_level_kvs("llama-bpe", "<|start_header_id|>")))
    write("gguf_tokenizer", "spm_llama2.gguf", gguf(spm_kvs()))
    bad = [kv if kv[0] != "tokenizer.ggml.bos_token_id" else (kv[0], U32, 4000) for kv in spm_kvs()]
    write("gguf_tokenizer", "bos_outside_vocab.gguf", gguf(bad))
    short_scores = [kv if kv[0] != "tokenizer.ggml.scores" else (kv[0], ARR, (F32, [0.0])) for kv in spm_kvs()]
    write("gguf_tokenizer", "scores_short.gguf", gguf(short_scores))
    wrong_type = [kv if kv[0] != "tokenizer.ggml.tokens" else (kv[0], ARR, (U32, [1, 2])) for kv in spm_kvs()]
    write("gguf_tokenizer", "tokens_not_strings.gguf", gguf(wrong_type))


def tiny_llama_gguf(block_count, layers=1, **overrides):
    """A one-layer Llama (d 8, 2 heads of 4, 1 KV head, MLP 12, vocabulary 10) claiming
    `block_count` layers; `overrides` replace metadata values (llama.* keys without the prefix)."""
    d, ff, vocab = 8, 12, 10
    meta = {"block_count": (U32, block_count), "embedding_length": (U32, d),
            "feed_forward_length": (U32, ff), "attention.head_count": (U32, 2),
            "attention.head_count_kv": (U32, 1), "attention.layer_norm_rms_epsilon": (F32, 1e-5),
            "context_length": (U32, 64)}
    for k, v in overrides.items():
        meta[k.replace("__", ".")] = (U32, v)
    kvs = [("general.architecture", STR, "llama")] + [("llama." + k, t, v) for k, (t, v) in meta.items()]
    kvs.append(("tokenizer.ggml.tokens", ARR, (STR, ["t%d" % i for i in range(vocab)])))
    zeros = lambda n: [0.0] * n
    tensors = [("token_embd.weight", [d, vocab], zeros(d * vocab))]
    for l in range(layers):
        p = "blk.%d." % l
        tensors += [(p + "attn_norm.weight", [d], zeros(d)), (p + "attn_q.weight", [d, 8], zeros(64)),
                    (p + "attn_k.weight", [d, 4], zeros(32)), (p + "attn_v.weight", [d, 4], zeros(32)),
                    (p + "attn_output.weight", [8, d], zeros(64)), (p + "ffn_norm.weight", [d], zeros(d)),
                    (p + "ffn_gate.weight", [d, ff], zeros(d * ff)), (p + "ffn_up.weight", [d, ff], zeros(d * ff)),
                    (p + "ffn_down.weight", [ff, d], zeros(d * ff))]
    tensors.append(("output_norm.weight", [d], zeros(d)))
    return gguf(kvs, tensors)


def gguf_count_seeds():
    write("gguf", "block_count_2e31.gguf", tiny_llama_gguf(1 << 31))
    write("gguf", "block_count_2.gguf", tiny_llama_gguf(2))
    write("gguf", "head_count_huge.gguf", tiny_llama_gguf(1, attention__head_count=1 << 30))
    write("gguf", "context_length_huge.gguf", tiny_llama_gguf(1, context_length=(1 << 32) - 1))


def safetensors_index_seeds():
    def index(weight_map, **extra):
        return json.dumps(dict(extra, weight_map=weight_map), indent=1)
    write("safetensors_index", "two_shards.json",
          index({"x": "a.safetensors", "y": "a.safetensors", "z": "b.safetensors"},
                metadata={"total_size": 44}))
    write("safetensors_index", "one_shard.json", index({"z": "b.safetensors"}))
    write("safetensors_index", "wrong_shard.json", index({"x": "b.safetensors", "y": "a.safetensors"}))
    write("safetensors_index", "missing_shard.json", index({"x": "c.safetensors"}))
    write("safetensors_index", "path_traversal.json", index({"x": "../a.safetensors"}))
    write("safetensors_index", "stale.json", index({"x": "a.safetensors", "w": "a.safetensors"}))
    write("safetensors_index", "not_an_object.json", '["x", "a.safetensors"]')


def mamba_config_seeds():
    def cfg(**fields):
        base = {"d_model": 64, "ssm_cfg": {"expand": 1}, "rms_norm_eps": 1e-5, "vocab_size": 256,
                "d_inner": 64, "d_xb": 32, "intermediate_size": 128, "hidden_act": "silu",
                "n_layer": 4, "attn_layers": [1, 3]}
        base.update(fields)
        return json.dumps(base, indent=1)
    write("mamba_config", "mamba1.json", cfg())
    write("mamba_config", "mamba2.json", cfg(ssm_cfg={"expand": 1, "ngroups": 4, "d_state": 16}))
    write("mamba_config", "mamba1_d_state_conv.json", cfg(ssm_cfg={"expand": 1, "d_state": 8, "d_conv": 3}))
    write("mamba_config", "all_mamba.json", cfg(attn_layers=[]))
    write("mamba_config", "n_layer_huge.json", cfg(n_layer=1 << 31))
    write("mamba_config", "attn_layer_outside.json", cfg(attn_layers=[4]))
    write("mamba_config", "unknown_field.json", cfg(d_ssm=1))
    write("mamba_config", "defaults.json", "{}")


def chat_template_seeds():
    msgs = "\0\x00You are kind.\0\x01Hi there\0\x02Hello! How can I help?\0\x01Tell me a joke"
    write("chat_template", "chatml.txt", "{{'<|im_start|>system\\nYou are SmolLM.<|im_end|>'}}" + CHATML + msgs)
    write("chat_template", "llama3.txt", "<|start_header_id|>{{ m.role }}<|end_header_id|>" + msgs)
    write("chat_template", "zephyr.txt", "<|user|>\n{{ m.content }}</s><|assistant|>" + msgs)
    write("chat_template", "llama2.txt", "[INST] <<SYS>>\\n{{ system }}\\n<</SYS>>\\n\\n" + msgs)
    write("chat_template", "mistral.txt", "{{ bos_token }}[INST] {{ m.content }} [/INST]" + msgs)
    write("chat_template", "mistral_system_only.txt", "[INST]\0\x00system only")
    write("chat_template", "bad_roles.txt", "[INST]\0\x02answer first\0\x03tool")
    write("chat_template", "unknown_family.txt", "{{ messages }}\0\x01hi")
    write("chat_template", "invalid_utf8.txt", "<|im_start|>system\n\xff\xfe<|im_end|>\0\x01\xc3")


if __name__ == "__main__":
    gguf_tokenizer_seeds()
    gguf_count_seeds()
    safetensors_index_seeds()
    mamba_config_seeds()
    chat_template_seeds()
