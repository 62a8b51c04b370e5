#!/usr/bin/env python3
"""Format compatibility on the GPU: a hybrid folder written by mil, loaded by the MambaInLlama
reference code (its `mamba2/` or `mamba/` wrapper, strict state-dict load) and run with its real
kernels (mamba_ssm's Triton SSD scan for Mamba-2, the selective-scan CUDA extension for Mamba-1),
must give the logits mil gives for the same tokens.

  build/cuda/examples/mil-chat -m HYBRID --raw -p "TEXT" --device cuda --logits-out mil.json
  scripts/reference_logits.py HYBRID --mil mil.json [--peers .peers] [--dtype bfloat16]
      [--attn eager|sdpa] [--out result.json]

The reference code comes from scripts/stage_reference.sh (PEERS/MambaInLlama, PEERS/mamba_ssm,
PEERS/csrc/selective_scan); a Mamba-1 hybrid JIT-builds the selective-scan extension first
(minutes; needs ninja). Needs PyTorch with CUDA, transformers, einops and safetensors; the
reference was written for transformers 4.4x, and newer versions get its Mamba layers' tuple
outputs unwrapped (adapt_layer_outputs).

Prints and writes (--out) one JSON record: the largest absolute logit difference, the same over
the largest absolute logit (a scale-free figure), the mean absolute difference, per-position
argmax agreement, and the reference's own bf16-vs-fp32 difference where --dtype is bfloat16, so
the mil-vs-reference figure can be read against the noise of bf16 itself. Exits 1 when the
argmax agreement is below --min-agreement or the scaled difference above --max-scaled-diff."""
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
    built here from the folder itself, it works wherever the folder was carried."""
    sys.path[:0] = [str(peers / "MambaInLlama"), str(peers)]
    mamba_cfg = json.loads((model_dir / "mamba_config.json").read_text())
    mamba2 = bool(MAMBA2_ONLY & set(mamba_cfg.get("ssm_cfg", {})))
    if not mamba2:  # Mamba-1: selective_scan_interface imports the compiled extension by name
        build_selective_scan(peers)
    from transformers import AutoModelForCausalLM
    if mamba2:
        from mamba2.hybrid_wrapper import MambaTransformerHybridModelWrapper
        from mamba2.hybrid_mamba_config import MambaConfig
        from mamba2.hybrid_model import MambaDecoderLayer
    else:
        from mamba.hybrid_wrapper import MambaTransformerHybridModelWrapper
        from mamba.hybrid_mamba_config import MambaConfig
        from mamba.hybrid_model import MambaDecoderLayer
    adapt_layer_outputs(MambaDecoderLayer)
    transformer = AutoModelForCausalLM.from_pretrained(str(model_dir), torch_dtype=dtype,
                                                       attn_implementation=attn)
    config = MambaConfig(**mamba_cfg)
    model = MambaTransformerHybridModelWrapper(str(model_dir), transformer, config, config.attn_layers,
                                               dtype, init_with_kqvo=False)
    model.eval()
    return model, "mamba2" if mamba2 else "mamba1"


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


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", type=pathlib.Path, help="hybrid folder written by mil")
    ap.add_argument("--mil", required=True, type=pathlib.Path, help="mil-chat --logits-out JSON")
    ap.add_argument("--peers", type=pathlib.Path, default=pathlib.Path(".peers"))
    ap.add_argument("--dtype", choices=["bfloat16", "float32"], default="bfloat16")
    ap.add_argument("--attn", choices=["eager", "sdpa"], default="eager")
    ap.add_argument("--min-agreement", type=float, default=0.9)
    ap.add_argument("--max-scaled-diff", type=float, default=0.05)
    ap.add_argument("--out", type=pathlib.Path)
    a = ap.parse_args(argv)

    import torch
    mil = json.loads(a.mil.read_text())
    ids, vocab = mil["ids"], mil["vocab"]
    if len(mil["logits"]) != len(ids) or any(len(r) != vocab for r in mil["logits"]):
        raise SystemExit(f"{a.mil}: logits are not [{len(ids)}][{vocab}]")
    dtype = getattr(torch, a.dtype)
    model, mixer = load_reference(a.model, a.peers, dtype, a.attn)
    x = torch.tensor([ids], dtype=torch.long, device="cuda")
    with torch.no_grad():
        ref = model(x, use_cache=False).logits[0].float()
        record = {"format": "mil-reference-logits/1", "model": str(a.model), "mixer": mixer,
                  "mil_device": mil.get("device"), "reference_dtype": a.dtype, "attention": a.attn,
                  "tokens": len(ids), "vocab": vocab,
                  "mil_vs_reference": compare(mil["logits"], ref.tolist())}
        if a.dtype == "bfloat16":  # the reference against itself in fp32: bf16's own noise
            model.model = model.model.float()
            ref32 = model(x, use_cache=False).logits[0].float()
            record["reference_bf16_vs_fp32"] = compare(ref.tolist(), ref32.tolist())
            record["mil_vs_reference_fp32"] = compare(mil["logits"], ref32.tolist())
    peers_commits = a.peers / "COMMITS"
    record["reference_commits"] = peers_commits.read_text().split("\n") if peers_commits.exists() else None
    record["gpu"] = torch.cuda.get_device_name(0)
    for key in ("mil_vs_reference", "reference_bf16_vs_fp32", "mil_vs_reference_fp32"):
        if key in record:
            r = record[key]
            print(f"{key}: max |diff| {r['max_abs_diff']:.4g} (x{r['scaled_max_diff']:.3g} of the largest "
                  f"logit), mean {r['mean_abs_diff']:.3g}, argmax agreement {r['argmax_agreement']:.3f}")
    if a.out:
        a.out.write_text(json.dumps(record, indent=1) + "\n")
    m = record["mil_vs_reference"]
    ok = m["argmax_agreement"] >= a.min_agreement and m["scaled_max_diff"] <= a.max_scaled_diff
    print("ok" if ok else "MISMATCH")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
