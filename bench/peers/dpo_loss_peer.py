#!/usr/bin/env python3
"""PyTorch eager peer of BM_dpo_loss_gpu_bf16_fwd_bwd (bench/kernels/bench_dpo_loss.cu).

The same loss on the same shape, written as a PyTorch user would: bf16 policy logits
[pairs * 2 * (prompt + answer), vocab], log_softmax in float32, gather at the targets, masked sum
per sequence, sigmoid DPO (or IPO / label smoothing) against fixed reference log-probabilities,
mean over pairs, backward into the logits. Sequence 2p is pair p's chosen answer, 2p + 1 its
rejected one; the first `prompt` rows of each sequence are ignored.

Times forward + backward with CUDA events (median of --iters after --warmup) and prints one JSON
object: the times, the floor of the benchmark (read the logits, write their gradient: 2 * 2 bytes
per logit at 2.98 TB/s) and the peak GPU memory of a step beyond its inputs. Needs only torch.
"""
import argparse
import json
import math
import statistics

import torch
import torch.nn.functional as F

H100_BYTES_PER_S = 2.98e12  # bench/common/bench.hpp, h100_bf16


def dpo_loss(logits, targets, mask, ref, pairs, seq_len, beta, label_smoothing, ipo):
    logp_rows = torch.log_softmax(logits.float(), dim=-1)
    token_logp = logp_rows.gather(-1, targets.unsqueeze(-1)).squeeze(-1) * mask
    logp = token_logp.view(2 * pairs, seq_len).sum(-1)
    h = (logp[0::2] - ref[0::2]) - (logp[1::2] - ref[1::2])
    if ipo:
        losses = (h - 1 / (2 * beta)) ** 2
    else:
        losses = (-(1 - label_smoothing) * F.logsigmoid(beta * h)
                  - label_smoothing * F.logsigmoid(-beta * h))
    return losses.mean(), logp


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pairs", type=int, default=8)
    p.add_argument("--prompt", type=int, default=64)
    p.add_argument("--answer", type=int, default=448)
    p.add_argument("--vocab", type=int, default=49152)
    p.add_argument("--beta", type=float, default=0.1)
    p.add_argument("--label-smoothing", type=float, default=0.0)
    p.add_argument("--ipo", action="store_true")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--iters", type=int, default=20)
    args = p.parse_args()

    device = torch.device("cuda")
    seq_len = args.prompt + args.answer
    rows = args.pairs * 2 * seq_len
    gen = torch.Generator(device=device).manual_seed(1)
    logits = (torch.rand(rows, args.vocab, device=device, generator=gen) * 16 - 8).to(torch.bfloat16)
    logits.requires_grad_(True)
    # Targets as in the benchmark: row index * 7919 mod vocab on answer rows; prompts masked.
    position = torch.arange(rows, device=device)
    targets = (position * 7919) % args.vocab
    mask = ((position % seq_len) >= args.prompt).float()
    ref = torch.tensor([-args.answer * 11.0 + s % 3 for s in range(2 * args.pairs)],
                       device=device, dtype=torch.float32)

    def step():
        logits.grad = None
        loss, _ = dpo_loss(logits, targets, mask, ref, args.pairs, seq_len, args.beta,
                           args.label_smoothing, args.ipo)
        loss.backward()
        return loss

    for _ in range(args.warmup):
        step()
    logits.grad = None  # the peak below then includes the gradient, as the step allocates it
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    times = []
    for _ in range(args.iters):
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        loss = step()
        stop.record()
        stop.synchronize()
        times.append(start.elapsed_time(stop))
    peak = torch.cuda.max_memory_allocated() - base
    floor_ms = 2 * 2 * rows * args.vocab / H100_BYTES_PER_S * 1e3
    median = statistics.median(times)
    print(json.dumps({
        "peer": "pytorch-eager",
        "loss": "ipo" if args.ipo else "sigmoid",
        "beta": args.beta,
        "label_smoothing": args.label_smoothing,
        "rows": rows,
        "vocab": args.vocab,
        "pairs": args.pairs,
        "dtype": "bf16",
        "ms_median": median,
        "ms_min": min(times),
        "floor_ms": floor_ms,
        "floor_over_time": floor_ms / median,
        "step_peak_MiB": peak / 2**20,
        "loss_value": float(loss),
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
    }))
    assert math.isfinite(float(loss))


if __name__ == "__main__":
    main()
