#!/usr/bin/env python3
"""Logits of a hybrid checkpoint folder (written by mil's save_hybrid, or by the MambaInLlama
reference code) from an independent float64 numpy implementation of the reference's forward, so
mil's logits can be compared with it. Needs numpy only (the safetensors reader is built in).

  scripts/check_hybrid_reference.py DIR --ids 1,2,3 [--out logits.json] [--compare mil.json]
  scripts/check_hybrid_reference.py --selftest

DIR holds mamba_config.json, config.json and model.safetensors (or shards + index); see
docs/hybrid_checkpoint_format.md. The output JSON is {"ids": [...], "vocab": V, "logits":
[[V floats] per position]}. --compare reads a JSON with "logits" (same layout, e.g. written by
mil) and prints the largest absolute difference and the argmax agreement.

What is computed, and where it comes from in github.com/jxiw/MambaInLlama (and the libraries it
calls); T tokens, rows are positions:
- Embedding, final RMSNorm, LM head (lm_head.weight, or the embeddings when tie_word_embeddings):
  transformers' LlamaForCausalLM, whose model the reference keeps (mamba2/hybrid_wrapper.py).
- Every layer: x += mixer(rms(x) * input_layernorm); x += down(silu(gate h) * up h) with
  h = rms(x) * post_attention_layernorm (mamba2/hybrid_model.py and mamba/hybrid_model.py:
  MambaDecoderLayer, MLP; transformers' LlamaDecoderLayer for attention layers).
  rms(v) = v / sqrt(mean(v^2) + rms_norm_eps) (mamba_ssm RMSNorm and LlamaRMSNorm).
- Attention layers (config.json's shape): q, k, v (+ biases when present), RoPE with
  rotate_half on the two halves of each head, inv_freq = theta^(-2i/hd) (Llama-3.1 "llama3"
  scaling when config.json has it), causal softmax(q k^T / sqrt(hd)) v with KV head h // (H/Hkv),
  o_proj (transformers' LlamaAttention).
- Mamba-2 layers (mamba2/hybrid_mamba_layer.py, Mamba2.forward, repeat_kv_before_conv = false):
  in_proj rows split [z (d_inner) | xBC (2 d_xb + d_inner) | dt (H)]; xBC = silu(causal depthwise
  conv1d(xBC) + bias) with conv1d.weight [C, 1, K] (out[t] = sum_k w[k] in[t - K + 1 + k]);
  x, B, C = split(xBC, [d_xb, d_xb, d_inner]); x and B repeated per head GQA-style (repeat_kv:
  head h reads KV group h // (H / Hkv)); per head h (headdim = d_state = hd, nheads = ngroups = H):
  dt = softplus(dt + dt_bias[h]), a = -exp(A_log[h]), state S[p, n]:
  S = exp(dt a) S + dt x_t[p] B_t[n], y_t[p] = sum_n S[p, n] C_t[n] + D[h] x_t[p]
  (mamba_ssm mamba_chunk_scan_combined with dt_bias, dt_softplus = True, D per head);
  then RMSNormGated(norm_before_gate = False, group_size = hd, eps 1e-5 fixed in the reference):
  g = y * silu(z), g / sqrt(mean over each group of hd of g^2 + 1e-5) * norm.weight; out_proj.
- Mamba-1 layers (mamba/hybrid_mamba_layer.py, Mamba.forward, repeat_kv_before_conv = true):
  x = in_proj_x u (d_xb), z = in_proj_z u (d_inner), B = B_proj u (d_xb), C = C_proj u
  (d_inner), dt = dt_proj(dt_proj_down u) (dt_proj has a bias); x and B are cut into groups of
  d_state (16) and each group repeated d_inner / d_xb times in a row (repeat_kv); x = silu(conv1d
  (x) + bias) over d_inner channels; selective_scan_fn with delta_bias = dt_proj.bias and
  delta_softplus: delta = softplus(dt + dt_proj.bias), so the bias counts twice (the quirk);
  channel c uses B and C group c // d_state, A = -exp(A_log[c, n]):
  h[c, n] = exp(delta_c A[c, n]) h[c, n] + delta_c B[n] x_c, y_c = (sum_n C[n] h[c, n] + D_c x_c)
  * silu(z_c); out_proj. mil marks files whose stored bias is meant to be added once with the
  safetensors metadata "mil_mamba1_dt_bias_added": "once"; the script then adds it once (the
  reference itself always adds it twice).
"""
import argparse
import json
import math
import os
import struct
import sys

import numpy as np

# ---------------------------------------------------------------------------- safetensors


def _read_safetensors(path):
    with open(path, "rb") as f:
        buf = f.read()
    (n,) = struct.unpack("<Q", buf[:8])
    header = json.loads(buf[8:8 + n])
    meta = header.pop("__metadata__", {}) or {}
    data = buf[8 + n:]
    out = {}
    for name, e in header.items():
        b, end = e["data_offsets"]
        raw = np.frombuffer(data[b:end], dtype=np.uint8)
        dt = e["dtype"]
        if dt == "F32":
            a = raw.view("<f4")
        elif dt == "F64":
            a = raw.view("<f8")
        elif dt == "F16":
            a = raw.view("<f2")
        elif dt == "BF16":
            a = (raw.view("<u2").astype(np.uint32) << 16).view(np.float32)
        else:
            raise ValueError(f"{path}: tensor {name} has dtype {dt}, not a float type")
        out[name] = a.astype(np.float64).reshape(e["shape"])
    return out, meta


def read_checkpoint(folder):
    single = os.path.join(folder, "model.safetensors")
    if os.path.exists(single):
        return _read_safetensors(single)
    with open(os.path.join(folder, "model.safetensors.index.json")) as f:
        index = json.load(f)
    tensors, meta = {}, None
    for shard in sorted(set(index["weight_map"].values())):
        t, m = _read_safetensors(os.path.join(folder, shard))
        tensors.update(t)
        meta = m if meta is None else meta
    return tensors, meta or {}


# ---------------------------------------------------------------------------- building blocks


def silu(v):
    return v / (1.0 + np.exp(-v))


def softplus(v):
    return np.where(v > 20.0, v, np.log1p(np.exp(np.minimum(v, 20.0))))


def rms(v, w, eps):
    return v / np.sqrt((v * v).mean(-1, keepdims=True) + eps) * w


def causal_conv(x, w, b):
    """x [T, C], w [C, 1, K] (PyTorch Conv1d, padding K - 1, first T outputs), b [C]."""
    T, _ = x.shape
    K = w.shape[-1]
    pad = np.concatenate([np.zeros((K - 1, x.shape[1])), x], 0)
    out = np.tile(b, (T, 1)).astype(np.float64)
    for k in range(K):
        out += pad[k:k + T] * w[:, 0, k]
    return out


def inv_freq(cfg, hd):
    rs = cfg.get("rope_scaling") or cfg.get("rope_parameters") or {}
    theta = rs.get("rope_theta", cfg.get("rope_theta", 10000.0))
    inv = 1.0 / (theta ** (np.arange(0, hd, 2, dtype=np.float64) / hd))
    if rs.get("rope_type", rs.get("type")) == "llama3":
        f, lo, hi = rs["factor"], rs["low_freq_factor"], rs["high_freq_factor"]
        old = rs["original_max_position_embeddings"]
        wl = 2 * math.pi / inv
        scaled = np.where(wl > old / lo, inv / f, inv)
        s = (old / wl - lo) / (hi - lo)
        medium = ~(wl < old / hi) & ~(wl > old / lo)
        inv = np.where(medium, (1 - s) * scaled / f + s * scaled, scaled)
    return inv


def attention(h, W, p, cfg, nh, nkv, hd):
    T = h.shape[0]
    q, k, v = (h @ W[p + f"self_attn.{n}_proj.weight"].T + W.get(p + f"self_attn.{n}_proj.bias", 0.0)
               for n in "qkv")
    q, k, v = q.reshape(T, nh, hd), k.reshape(T, nkv, hd), v.reshape(T, nkv, hd)
    fr = np.outer(np.arange(T), inv_freq(cfg, hd))
    emb = np.concatenate([fr, fr], -1)
    cos, sin = np.cos(emb)[:, None, :], np.sin(emb)[:, None, :]
    rot = lambda a: np.concatenate([-a[..., hd // 2:], a[..., :hd // 2]], -1)
    q, k = q * cos + rot(q) * sin, k * cos + rot(k) * sin
    mask = np.tril(np.ones((T, T))) > 0
    out = np.zeros((T, nh, hd))
    for i in range(nh):
        j = i // (nh // nkv)
        s = np.where(mask, q[:, i] @ k[:, j].T / math.sqrt(hd), -np.inf)
        s = np.exp(s - s.max(-1, keepdims=True))
        out[:, i] = (s / s.sum(-1, keepdims=True)) @ v[:, j]
    return out.reshape(T, nh * hd) @ W[p + "self_attn.o_proj.weight"].T


def mamba2_scan(x, B, C, dt, A, D):
    """Per head: x, B, C [T, H, P|N], dt [T, H] (after softplus), A, D [H]. Recurrent form."""
    T, H, P = x.shape
    N = B.shape[-1]
    y = np.zeros((T, H, P))
    for h in range(H):
        S = np.zeros((P, N))
        for t in range(T):
            S = np.exp(dt[t, h] * A[h]) * S + dt[t, h] * np.outer(x[t, h], B[t, h])
            y[t, h] = S @ C[t, h] + D[h] * x[t, h]
    return y


def mamba2_scan_quadratic(x, B, C, dt, A, D):
    """The same map in its attention-like (dual) form: an independent check of the scan."""
    T, H, P = x.shape
    y = np.zeros((T, H, P))
    for h in range(H):
        cum = np.cumsum(dt[:, h] * A[h])
        for t in range(T):
            w = np.exp(cum[t] - cum[: t + 1]) * dt[: t + 1, h] * (B[: t + 1, h] @ C[t, h])
            y[t, h] = w @ x[: t + 1, h] + D[h] * x[t, h]
    return y


def mamba2_mixer(u, W, p, mc, H, Hkv, hd):
    di, dxb = mc["d_inner"], mc["d_xb"]
    T = u.shape[0]
    zxbcdt = u @ W[p + "in_proj.weight"].T
    z, xbc, dt = zxbcdt[:, :di], zxbcdt[:, di:2 * di + 2 * dxb], zxbcdt[:, 2 * di + 2 * dxb:]
    xbc = silu(causal_conv(xbc, W[p + "conv1d.weight"], W[p + "conv1d.bias"]))
    x, B, C = xbc[:, :dxb], xbc[:, dxb:2 * dxb], xbc[:, 2 * dxb:]
    rep = H // Hkv
    x = np.repeat(x.reshape(T, Hkv, hd), rep, axis=1)  # head h <- KV group h // rep
    B = np.repeat(B.reshape(T, Hkv, hd), rep, axis=1)
    C = C.reshape(T, H, hd)
    delta = softplus(dt + W[p + "dt_bias"])
    y = mamba2_scan(x, B, C, delta, -np.exp(W[p + "A_log"]), W[p + "D"]).reshape(T, di)
    g = (y * silu(z)).reshape(T, H, hd)
    g = g / np.sqrt((g * g).mean(-1, keepdims=True) + 1e-5)
    return (g.reshape(T, di) * W[p + "norm.weight"]) @ W[p + "out_proj.weight"].T


def mamba1_mixer(u, W, p, mc, bias_count):
    di, dxb = mc["d_inner"], mc["d_xb"]
    N = mc.get("ssm_cfg", {}).get("d_state", 16)
    T = u.shape[0]
    rep = di // dxb
    x = u @ W[p + "in_proj_x.weight"].T
    z = u @ W[p + "in_proj_z.weight"].T
    B = u @ W[p + "B_proj.weight"].T
    C = u @ W[p + "C_proj.weight"].T
    bias = W[p + "dt_proj.bias"]
    dt = (u @ W[p + "dt_proj_down.weight"].T) @ W[p + "dt_proj.weight"].T + bias
    x = np.repeat(x.reshape(T, dxb // N, N), rep, axis=1).reshape(T, di)  # groups of d_state
    B = np.repeat(B.reshape(T, dxb // N, N), rep, axis=1)  # [T, di / N, N]
    C = C.reshape(T, di // N, N)
    x = silu(causal_conv(x, W[p + "conv1d.weight"], W[p + "conv1d.bias"]))
    delta = softplus(dt + (bias if bias_count == 2 else 0.0))
    A = -np.exp(W[p + "A_log"])  # [di, N]
    D = W[p + "D"]
    g = np.arange(di) // N
    h = np.zeros((di, N))
    y = np.zeros((T, di))
    for t in range(T):
        h = np.exp(delta[t][:, None] * A) * h + (delta[t] * x[t])[:, None] * B[t][g]
        y[t] = (h * C[t][g]).sum(-1) + D * x[t]
    y = y * silu(z)
    return y @ W[p + "out_proj.weight"].T


def forward(folder, ids):
    with open(os.path.join(folder, "mamba_config.json")) as f:
        mc = json.load(f)
    with open(os.path.join(folder, "config.json")) as f:
        cfg = json.load(f)
    W, meta = read_checkpoint(folder)
    nh, nkv = cfg["num_attention_heads"], cfg.get("num_key_value_heads", cfg["num_attention_heads"])
    hd = cfg.get("head_dim") or cfg["hidden_size"] // nh
    eps = cfg.get("rms_norm_eps", 1e-6)
    attn = set(mc.get("attn_layers", []))
    bias_count = 1 if meta.get("mil_mamba1_dt_bias_added") == "once" else 2
    x = W["model.embed_tokens.weight"][np.asarray(ids)]
    for l in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{l}."
        h = rms(x, W[p + "input_layernorm.weight"], eps)
        if l in attn:
            x = x + attention(h, W, p, cfg, nh, nkv, hd)
        elif p + "mamba.in_proj.weight" in W:
            x = x + mamba2_mixer(h, W, p + "mamba.", mc, nh, nkv, hd)
        else:
            x = x + mamba1_mixer(h, W, p + "mamba.", mc, bias_count)
        h = rms(x, W[p + "post_attention_layernorm.weight"], eps)
        gate, up = h @ W[p + "mlp.gate_proj.weight"].T, h @ W[p + "mlp.up_proj.weight"].T
        x = x + (silu(gate) * up) @ W[p + "mlp.down_proj.weight"].T
    x = rms(x, W["model.norm.weight"], eps)
    tied = cfg.get("tie_word_embeddings", False)
    head = W["model.embed_tokens.weight" if tied else "lm_head.weight"]
    return x @ head.T


def selftest():
    rng = np.random.default_rng(0)
    T, H, P = 9, 3, 4
    x, B, C = (rng.standard_normal((T, H, P)) for _ in range(3))
    dt = softplus(rng.standard_normal((T, H)))
    A, D = -np.exp(rng.standard_normal(H)), rng.standard_normal(H)
    d = np.abs(mamba2_scan(x, B, C, dt, A, D) - mamba2_scan_quadratic(x, B, C, dt, A, D)).max()
    w = rng.standard_normal((5, 1, 3))
    xs, bs = rng.standard_normal((T, 5)), rng.standard_normal(5)
    ref = np.array([[bs[c] + sum(w[c, 0, k] * (xs[t - 2 + k, c] if t - 2 + k >= 0 else 0.0)
                                 for k in range(3)) for c in range(5)] for t in range(T)])
    dc = np.abs(causal_conv(xs, w, bs) - ref).max()
    print(f"selftest: scan recurrent vs dual form {d:.3g}, conv {dc:.3g}")
    return d < 1e-12 and dc < 1e-12


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("folder", nargs="?")
    ap.add_argument("--ids", help="comma-separated token ids")
    ap.add_argument("--out", help="write the logits JSON here (default: stdout)")
    ap.add_argument("--compare", help="a JSON with 'logits' to compare with")
    ap.add_argument("--selftest", action="store_true")
    a = ap.parse_args()
    if a.selftest:
        sys.exit(0 if selftest() else 1)
    if not a.folder or not a.ids:
        ap.error("give a folder and --ids")
    ids = [int(s) for s in a.ids.split(",") if s.strip()]
    logits = forward(a.folder, ids)
    out = {"ids": ids, "vocab": int(logits.shape[1]), "logits": logits.tolist()}
    if a.out:
        with open(a.out, "w") as f:
            json.dump(out, f)
    elif not a.compare:
        json.dump(out, sys.stdout)
        print()
    if a.compare:
        with open(a.compare) as f:
            other = np.asarray(json.load(f)["logits"], dtype=np.float64).reshape(logits.shape)
        diff = np.abs(other - logits).max()
        agree = (other.argmax(-1) == logits.argmax(-1)).mean()
        scale = np.abs(logits).max()
        print(f"max |diff| {diff:.3g} (max |logit| {scale:.3g}), argmax agreement {agree:.3f}")


if __name__ == "__main__":
    main()
