#!/usr/bin/env python3
"""Format compatibility on the GPU: a hybrid folder written by mil, loaded by the MambaInLlama
reference code (its `mamba2/` or `mamba/` wrapper, strict state-dict load) and run with its real
kernels (mamba_ssm's Triton SSD scan for Mamba-2, the selective-scan CUDA extension for Mamba-1),
must give the logits mil gives for the same tokens.

  build/cuda/examples/mil-chat -m HYBRID --raw -p "TEXT" --device cuda --logits-out mil.json
  build/cuda/examples/mil-chat -m HYBRID --raw -p "TEXT" --device cpu --logits-out mil-f32.json
  scripts/reference_logits.py HYBRID --mil mil.json [--mil mil-f32.json] [--peers .peers]
      [--dtype bfloat16] [--attn eager|sdpa] [--out result.json]

The reference code comes from scripts/stage_reference.sh (PEERS/MambaInLlama, PEERS/mamba_ssm,
PEERS/csrc/selective_scan); a Mamba-1 hybrid JIT-builds the selective-scan extension first
(minutes; needs ninja). Needs PyTorch with CUDA, transformers, einops and safetensors; the
reference was written for transformers 4.4x, and newer versions get its Mamba layers' tuple
outputs unwrapped (adapt_layer_outputs).

Loading: the Llama skeleton is built from the folder's config.json without weights, the
reference wrapper replaces every layer not in attn_layers by its MambaDecoderLayer and loads the
whole state dict strictly (its own code); verify_loaded then checks, and stops on any difference,
that the layer kinds follow attn_layers and that every tensor of the files is in the model with
its shape and value, and nothing else. (The wrapper's own from_pretrained first loads the folder
as a plain Llama: transformers then reports the Mamba tensors as unexpected and the attention
weights of the Mamba layers as missing, which is expected there and harmless, but reads like a
failure; it is not done here.)

causal-conv1d: the reference's Mamba-2 layer without the causal_conv1d package takes a fallback
that keeps the last d_conv - 1 positions of the convolution instead of dropping them
(mamba2/hybrid_mamba_layer.py, `[:, -(self.d_conv - 1):]`; mamba_ssm's own Mamba2 has
`[:, :-(self.d_conv - 1)]`), so its x, B, C are 3 positions long and the SSD scan stops on
`dt.shape == (batch, seqlen, nheads)`. Where the package cannot be imported, a PyTorch
causal_conv1d_fn / causal_conv1d_update with the kernel's arithmetic (fp32 accumulation from the
bias, SiLU, cast back) is put in its place before the reference is imported; the record says
which one ran ("causal_conv1d").

Prints and writes (--out) one JSON record: for each --mil file, the largest absolute logit
difference, the same over the largest absolute logit (a scale-free figure), the mean absolute
difference and per-position argmax agreement against the reference run in the same precision
(mil's "f32" logits against the reference in float32, "bf16" ones against --dtype), and the
reference's own bf16-vs-fp32 difference where --dtype is bfloat16 (the folder loaded a second
time in float32), so a bf16 figure can be read against the noise of bf16 itself. Verdict per
file: float32 logits pass under --f32-max-scaled-diff and --min-agreement; bf16 logits pass
under --max-scaled-diff and --min-agreement, or, failing that, when mil's bf16 logits are no
farther from the float32 reference (mean and largest difference) than --noise-factor times the
reference's own bf16 run ("within the reference's bf16 noise", said so in the record): a freshly
converted hybrid is so sensitive that the reference's bf16 run alone moves logits by several
units. mil's f32 logits (mil-chat --device cpu) against the float32 reference are the sharp
test. Exits 1 when any file fails."""
import argparse
import json
import math
import os
import pathlib
import sys
import time


# ssm_cfg keys only the Mamba-2 mixer takes: how mil (nn/hybrid_checkpoint.hpp) tells the mixers
# apart, since both write d_state-style keys.
MAMBA2_ONLY = {"ngroups", "headdim", "d_ssm", "conv_init", "A_init_range", "D_has_hdim", "rmsnorm",
               "norm_before_gate", "dt_limit", "bias", "chunk_size", "use_mem_eff_path"}


def load_reference(model_dir, peers, dtype, attn):
    """The reference wrapper over the folder. The wrapper's from_pretrained would load the
    Transformer half from config.json's _name_or_path, the path where the folder was written;
    built here from the folder itself, it works wherever the folder was carried. The Llama is
    built from config.json alone: every tensor then comes from the wrapper's strict load."""
    for path in (str(peers), str(peers / "MambaInLlama")):
        if path not in sys.path:
            sys.path.insert(0, path)
    mamba_cfg = json.loads((model_dir / "mamba_config.json").read_text())
    mamba2 = bool(MAMBA2_ONLY & set(mamba_cfg.get("ssm_cfg", {})))
    conv = ensure_causal_conv1d()  # before the reference's modules import it
    if not mamba2:  # Mamba-1: selective_scan_interface imports the compiled extension by name
        build_selective_scan(peers)
    import transformers
    from transformers import AutoConfig, AutoModelForCausalLM
    if mamba2:
        from mamba2.hybrid_wrapper import MambaTransformerHybridModelWrapper
        from mamba2.hybrid_mamba_config import MambaConfig
        from mamba2.hybrid_model import MambaDecoderLayer
    else:
        from mamba.hybrid_wrapper import MambaTransformerHybridModelWrapper
        from mamba.hybrid_mamba_config import MambaConfig
        from mamba.hybrid_model import MambaDecoderLayer
    adapt_layer_outputs(MambaDecoderLayer)
    major, minor = (int(v) for v in transformers.__version__.split(".")[:2])
    dtype_kw = {"dtype": dtype} if (major, minor) >= (4, 56) else {"torch_dtype": dtype}
    hf_config = AutoConfig.from_pretrained(str(model_dir))
    transformer = AutoModelForCausalLM.from_config(hf_config, attn_implementation=attn, **dtype_kw)
    config = MambaConfig(**mamba_cfg)
    model = MambaTransformerHybridModelWrapper(str(model_dir), transformer, config, config.attn_layers,
                                               dtype, init_with_kqvo=False)
    model.eval()
    loaded = verify_loaded(model, model_dir, config, MambaDecoderLayer)
    return model, "mamba2" if mamba2 else "mamba1", conv, loaded


def verify_loaded(model, model_dir, config, decoder_class):
    """Stops (SystemExit) unless the wrapped model is exactly the folder: layer N a Mamba layer
    iff N is not in attn_layers, and the state dict holding every tensor of the safetensors
    files, with its shape and value, and nothing else."""
    import torch
    from util import load_safetensors_to_dict  # the reference's own reader, as its wrapper uses
    problems = []
    layers = model.model.model.layers
    if len(layers) != config.n_layer:
        problems.append(f"{len(layers)} decoder layers, mamba_config.json's n_layer is {config.n_layer}")
    attn = set(config.attn_layers)
    if not attn <= set(range(len(layers))):
        problems.append(f"attn_layers {sorted(attn - set(range(len(layers))))} are not layers of the model")
    mamba_layers = [i for i, layer in enumerate(layers) if isinstance(layer, decoder_class)]
    for i, layer in enumerate(layers):
        if isinstance(layer, decoder_class) == (i in attn):
            problems.append(f"layer {i} is {type(layer).__name__}, expected "
                            f"{'attention' if i in attn else decoder_class.__module__ + '.MambaDecoderLayer'}")
    files = load_safetensors_to_dict(str(model_dir))
    state = model.model.state_dict()
    missing = sorted(set(state) - set(files))
    unexpected = sorted(set(files) - set(state))
    if missing:
        problems.append(f"{len(missing)} tensors of the model not in the files: {', '.join(missing[:12])}")
    if unexpected:
        problems.append(f"{len(unexpected)} tensors of the files not in the model: {', '.join(unexpected[:12])}")
    differ = []
    for name in sorted(set(state) & set(files)):
        ours, theirs = state[name], files[name]
        if tuple(ours.shape) != tuple(theirs.shape):
            problems.append(f"{name}: shape {tuple(ours.shape)} in the model, {tuple(theirs.shape)} in the files")
        elif not torch.equal(ours.detach().cpu(), theirs.to(ours.dtype)):
            differ.append(name)
    if differ:
        problems.append(f"{len(differ)} tensors differ from the files: {', '.join(differ[:12])}")
    if problems:
        raise SystemExit("reference_logits.py: the reference model is not the folder:\n  " + "\n  ".join(problems))
    print(f"[reference_logits] loaded strictly: {len(files)} tensors, Mamba layers {mamba_layers}, "
          f"attention layers {sorted(attn)}", file=sys.stderr)
    return {"tensors": len(files), "mamba_layers": mamba_layers, "attention_layers": sorted(attn)}


def ensure_causal_conv1d():
    """The causal_conv1d package, or where it cannot be imported, a PyTorch stand-in under its
    name (see the docstring at the top: the reference's Mamba-2 fallback is broken). Returns
    which one the reference will use."""
    try:
        import causal_conv1d as package
        package.causal_conv1d_fn, package.causal_conv1d_update  # what the reference imports
        return STAND_IN if getattr(package, "STAND_IN", False) else "causal_conv1d package"
    except (ImportError, AttributeError):
        pass
    import types
    for name in [n for n in sys.modules if n == "causal_conv1d" or n.startswith("causal_conv1d.")]:
        del sys.modules[name]
    module = types.ModuleType("causal_conv1d", "PyTorch stand-in of causal_conv1d (scripts/reference_logits.py)")
    module.causal_conv1d_fn = causal_conv1d_fn
    module.causal_conv1d_update = causal_conv1d_update
    module.STAND_IN = True
    sys.modules["causal_conv1d"] = module
    print("[reference_logits] causal_conv1d not installed: its PyTorch stand-in is used", file=sys.stderr)
    return STAND_IN


STAND_IN = "PyTorch stand-in (reference_logits.py)"


def causal_conv1d_fn(x, weight, bias=None, seq_idx=None, initial_states=None, return_final_states=False,
                     final_states_out=None, activation=None):
    """causal_conv1d's causal_conv1d_fn for what the reference asks of it: x (batch, dim, seqlen),
    weight (dim, width), optional bias (dim); out[t] = act(bias + sum_k weight[k] x[t - width + 1 + k])
    (zeros before the start), accumulated in fp32 from the bias as the kernel does, in x's dtype."""
    import torch.nn.functional as F
    if seq_idx is not None or initial_states is not None or return_final_states or final_states_out is not None:
        raise NotImplementedError("causal_conv1d stand-in: seq_idx / initial or final states")
    if activation not in (None, "silu", "swish"):
        raise NotImplementedError(f"causal_conv1d stand-in: activation {activation}")
    width, seqlen = weight.shape[-1], x.shape[-1]
    xp = F.pad(x.float(), (width - 1, 0))
    w = weight.float()
    out = None if bias is None else bias.float()[:, None].expand(-1, seqlen)
    for k in range(width):
        term = w[:, k, None] * xp[..., k:k + seqlen]
        out = term if out is None else out + term
    if activation is not None:
        out = F.silu(out)
    return out.to(x.dtype)


def causal_conv1d_update(x, conv_state, weight, bias=None, activation=None, cache_seqlens=None,
                         conv_state_indices=None):
    """causal_conv1d's causal_conv1d_update (decoding; not used by a forward without a cache):
    x (batch, dim) or (batch, dim, seqlen), conv_state (batch, dim, state_len) updated in place."""
    import torch
    import torch.nn.functional as F
    if cache_seqlens is not None or conv_state_indices is not None:
        raise NotImplementedError("causal_conv1d stand-in: cache_seqlens / conv_state_indices")
    if activation not in (None, "silu", "swish"):
        raise NotImplementedError(f"causal_conv1d stand-in: activation {activation}")
    squeeze = x.dim() == 2
    xs = x.unsqueeze(-1) if squeeze else x
    width, seqlen, state_len = weight.shape[-1], xs.shape[-1], conv_state.shape[-1]
    full = torch.cat([conv_state.float(), xs.float()], dim=-1)
    window = F.pad(full, (max(0, width - 1 + seqlen - full.shape[-1]), 0))[..., -(width - 1 + seqlen):]
    conv_state.copy_(full[..., -state_len:].to(conv_state.dtype))
    w = weight.float()
    out = None if bias is None else bias.float()[:, None].expand(-1, seqlen)
    for k in range(width):
        term = w[:, k, None] * window[..., k:k + seqlen]
        out = term if out is None else out + term
    if activation is not None:
        out = F.silu(out)
    out = out.to(x.dtype)
    return out.squeeze(-1) if squeeze else out


def adapt_layer_outputs(layer_class):
    """The reference's Mamba layers return a tuple, as transformers' decoder layers did when the
    code was written; newer transformers pass a layer's output straight on as the hidden states.
    There, the layer returns its hidden states alone (the computation is untouched)."""
    import inspect
    from transformers.models.llama import modeling_llama
    if "layer_outputs[0]" in inspect.getsource(modeling_llama.LlamaModel.forward):
        return
    forward = layer_class.forward

    def hidden_states_only(self, *args, **kwargs):
        out = forward(self, *args, **kwargs)
        return out[0] if isinstance(out, tuple) else out
    layer_class.forward = hidden_states_only


def build_selective_scan(peers):
    from torch.utils.cpp_extension import load
    src = peers / "csrc" / "selective_scan"
    if not src.is_dir():
        raise SystemExit(f"{src}: no selective-scan sources (scripts/stage_reference.sh stages them)")
    t0 = time.time()
    module = load(
        name="selective_scan_cuda", verbose=False,
        sources=[str(p) for p in sorted(src.iterdir()) if p.suffix in (".cpp", ".cu")],
        extra_include_paths=[str(src)], extra_cflags=["-O3", "-std=c++17"],
        extra_cuda_cflags=["-O3", "-std=c++17", "--use_fast_math", "-U__CUDA_NO_HALF_OPERATORS__",
                           "-U__CUDA_NO_HALF_CONVERSIONS__", "-U__CUDA_NO_BFLOAT16_OPERATORS__",
                           "-U__CUDA_NO_BFLOAT16_CONVERSIONS__", "--expt-relaxed-constexpr",
                           "--expt-extended-lambda", "-gencode", "arch=compute_90,code=sm_90"])
    sys.modules["selective_scan_cuda"] = module
    print(f"[reference_logits] selective_scan_cuda built in {time.time() - t0:.0f} s", file=sys.stderr)


def compare(ours, theirs):
    """Differences of two [T][V] logit tables (lists of lists or tensors as nested lists)."""
    worst = total = scale = 0.0
    count = agree = 0
    positions = []
    for a, b in zip(ours, theirs):
        row_worst = max(abs(x - y) for x, y in zip(a, b))
        worst = max(worst, row_worst)
        total += sum(abs(x - y) for x, y in zip(a, b))
        count += len(a)
        scale = max(scale, max(abs(x) for x in b))
        same = max(range(len(a)), key=a.__getitem__) == max(range(len(b)), key=b.__getitem__)
        agree += same
        positions.append({"max_abs_diff": row_worst, "argmax_equal": same})
    return {"max_abs_diff": worst, "mean_abs_diff": total / max(count, 1),
            "max_abs_logit": scale, "scaled_max_diff": worst / scale if scale else math.inf,
            "argmax_agreement": agree / max(len(positions), 1), "positions": positions}


def precision_of(mil, default):
    """"f32" or "bf16" from mil-chat's device string ("cpu f32", "cuda bf16"), else default."""
    words = str(mil.get("device") or "").split()
    return words[-1] if words and words[-1] in ("f32", "bf16", "f16") else default


def judge(entry, noise, a):
    """Verdict of one mil file (see the docstring at the top); adds "ok" and "verdict" to entry."""
    m = entry["vs_reference"]
    if entry["mil_precision"] == "f32" and entry["reference_dtype"] == "float32":
        ok = m["scaled_max_diff"] <= a.f32_max_scaled_diff and m["argmax_agreement"] >= a.min_agreement
        why = (f"float32: scaled {m['scaled_max_diff']:.3g} (limit {a.f32_max_scaled_diff}), argmax agreement "
               f"{m['argmax_agreement']:.3f} (limit {a.min_agreement})")
    else:
        ok = m["scaled_max_diff"] <= a.max_scaled_diff and m["argmax_agreement"] >= a.min_agreement
        why = (f"{entry['reference_dtype']}: scaled {m['scaled_max_diff']:.3g} (limit {a.max_scaled_diff}), "
               f"argmax agreement {m['argmax_agreement']:.3f} (limit {a.min_agreement})")
        f32 = entry.get("vs_reference_fp32")
        if not ok and noise is not None and f32 is not None:
            in_noise = (f32["mean_abs_diff"] <= a.noise_factor * noise["mean_abs_diff"]
                        and f32["max_abs_diff"] <= a.noise_factor * noise["max_abs_diff"])
            why += (f"; against the float32 reference mean {f32['mean_abs_diff']:.3g} / max "
                    f"{f32['max_abs_diff']:.3g}, the reference's own bf16 run mean {noise['mean_abs_diff']:.3g} / max "
                    f"{noise['max_abs_diff']:.3g} (factor {a.noise_factor}): "
                    + ("within the reference's bf16 noise" if in_noise else "beyond the reference's bf16 noise"))
            ok = in_noise
    entry["ok"], entry["verdict"] = ok, why
    return ok


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", type=pathlib.Path, help="hybrid folder written by mil")
    ap.add_argument("--mil", required=True, type=pathlib.Path, action="append",
                    help="mil-chat --logits-out JSON (repeatable: e.g. cuda bf16 and cpu f32, same prompt)")
    ap.add_argument("--peers", type=pathlib.Path, default=pathlib.Path(".peers"))
    ap.add_argument("--dtype", choices=["bfloat16", "float32"], default="bfloat16")
    ap.add_argument("--attn", choices=["eager", "sdpa"], default="eager")
    ap.add_argument("--min-agreement", type=float, default=0.9)
    ap.add_argument("--max-scaled-diff", type=float, default=0.05)
    ap.add_argument("--f32-max-scaled-diff", type=float, default=0.01,
                    help="limit for mil's f32 logits against the float32 reference (Triton's dots run in TF32)")
    ap.add_argument("--noise-factor", type=float, default=1.5,
                    help="bf16 logits also pass within this factor of the reference's own bf16-vs-fp32 difference")
    ap.add_argument("--out", type=pathlib.Path)
    a = ap.parse_args(argv)

    import torch
    mils = []
    for path in a.mil:
        mil = json.loads(path.read_text())
        ids, vocab = mil["ids"], mil["vocab"]
        if len(mil["logits"]) != len(ids) or any(len(r) != vocab for r in mil["logits"]):
            raise SystemExit(f"{path}: logits are not [{len(ids)}][{vocab}]")
        if mils and (ids != mils[0][1]["ids"] or vocab != mils[0][1]["vocab"]):
            raise SystemExit(f"{path}: other tokens or vocabulary than {mils[0][0]}")
        mils.append((path, mil))
    ids, vocab = mils[0][1]["ids"], mils[0][1]["vocab"]
    # float32 means float32 where PyTorch decides (mamba_ssm's Triton SSD dots use TF32 anyway)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    refs = {}
    # The reference in --dtype, then where that is bfloat16, loaded again in float32 (its bf16-vs-
    # fp32 difference is bf16's own noise): a fresh load, not .float() of the bf16 model, whose
    # non-persistent buffers (RoPE's inv_freq) the wrapper's .to(dtype) rounded to bf16.
    for run_dtype in [a.dtype] + (["float32"] if a.dtype == "bfloat16" else []):
        model, mixer, conv, loaded = load_reference(a.model, a.peers, getattr(torch, run_dtype), a.attn)
        x = torch.tensor([ids], dtype=torch.long, device=next(model.parameters()).device)
        with torch.no_grad():
            refs[run_dtype] = model(x, use_cache=False).logits[0].float().tolist()
        del model
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    record = {"format": "mil-reference-logits/2", "model": str(a.model), "mixer": mixer,
              "reference_dtype": a.dtype, "attention": a.attn, "causal_conv1d": conv, "loaded": loaded,
              "tokens": len(ids), "vocab": vocab}
    noise = None
    if "float32" in refs and a.dtype != "float32":
        noise = record["reference_bf16_vs_fp32"] = compare(refs[a.dtype], refs["float32"])
    entries = []
    for path, mil in mils:
        precision = precision_of(mil, "f32" if a.dtype == "float32" else "bf16")
        against = "float32" if precision == "f32" and "float32" in refs else a.dtype
        entry = {"mil": str(path), "mil_device": mil.get("device"), "mil_precision": precision,
                 "reference_dtype": against,
                 "vs_reference": compare(mil["logits"], refs[against])}
        if against != "float32" and "float32" in refs:
            entry["vs_reference_fp32"] = compare(mil["logits"], refs["float32"])
        judge(entry, noise, a)
        entries.append(entry)
    record["mil"] = entries
    first = entries[0]  # the keys of format 1, from the first --mil file
    record["mil_device"] = first["mil_device"]
    record["mil_vs_reference"] = first["vs_reference"]
    if "vs_reference_fp32" in first:
        record["mil_vs_reference_fp32"] = first["vs_reference_fp32"]
    peers_commits = a.peers / "COMMITS"
    record["reference_commits"] = peers_commits.read_text().split("\n") if peers_commits.exists() else None
    record["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None

    def line(name, r):
        print(f"{name}: max |diff| {r['max_abs_diff']:.4g} (x{r['scaled_max_diff']:.3g} of the largest "
              f"logit), mean {r['mean_abs_diff']:.3g}, argmax agreement {r['argmax_agreement']:.3f}")
    if noise is not None:
        line("reference_bf16_vs_fp32", noise)
    for e in entries:
        line(f"mil ({e['mil_device']}) vs reference {e['reference_dtype']}", e["vs_reference"])
        if "vs_reference_fp32" in e:
            line(f"mil ({e['mil_device']}) vs reference float32", e["vs_reference_fp32"])
        print(f"  {'ok' if e['ok'] else 'MISMATCH'}: {e['verdict']}")
    ok = all(e["ok"] for e in entries)
    record["ok"] = ok
    if a.out:
        a.out.write_text(json.dumps(record, indent=1) + "\n")
    print("ok" if ok else "MISMATCH")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
