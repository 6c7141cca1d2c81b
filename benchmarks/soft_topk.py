"""Soft top-k (LapSum) vs hard top-k + scatter: forward+backward time and peak extra memory.

Setting: x = relu(randn(4096, 16384)) fp32, k ≈ 64 per row, α = 1e-2.
Targets on the 2-core CPU: time ratio ≤ 2.0, peak extra memory ≤ 3× the input.
Both timings are taken in one process, interleaved; memory is measured in a fresh child
process per operator (the process's peak RSS above the level after building the input).

    python -m benchmarks.soft_topk [--rows 4096 --n 16384 --k 64 --alpha 1e-2 --device cpu]
"""

from __future__ import annotations

import argparse
import gc
import json

import torch

from benchmarks._common import best_time, emit, peak_rss_bytes, run_child
from softsae_lib.ops import soft_topk


def make_inputs(rows: int, n: int, k: float, device: str, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, n, generator=gen).relu_().to(device)
    kk = (k + torch.rand(rows, 1, generator=gen) * 0.99).to(device)  # fractional, ≈ k per row
    grad = torch.randn(rows, n, generator=gen).to(device)
    return x, kk, grad


def soft_step(x, kk, grad, alpha):
    xr = x.detach().requires_grad_()
    soft_topk(xr, kk, alpha).backward(grad)
    return xr.grad


def hard_step(x, k: int, grad):
    xr = x.detach().requires_grad_()
    vals, idx = xr.topk(k, dim=-1)
    torch.zeros_like(xr).scatter(1, idx, vals).backward(grad)
    return xr.grad


def _memory_child(which: str, rows: int, n: int, k: float, alpha: float) -> None:
    """Child-process entry: build inputs, record baseline RSS, run once, print JSON."""
    x, kk, grad = make_inputs(rows, n, k, "cpu")
    gc.collect()
    base = peak_rss_bytes()
    # ru_maxrss only grows, so the baseline is the high-water mark after building the inputs.
    if which == "soft":
        g = soft_step(x, kk, grad, alpha)
    else:
        g = hard_step(x, int(k), grad)
    del g
    print(json.dumps({"extra_bytes": peak_rss_bytes() - base, "input_bytes": x.numel() * x.element_size()}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=4096)
    ap.add_argument("--n", type=int, default=16384)
    ap.add_argument("--k", type=float, default=64)
    ap.add_argument("--alpha", type=float, default=1e-2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--memory-child", choices=["soft", "hard"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.memory_child:
        _memory_child(args.memory_child, args.rows, args.n, args.k, args.alpha)
        return
    x, kk, grad = make_inputs(args.rows, args.n, args.k, args.device)
    t_soft = best_time(lambda: soft_step(x, kk, grad, args.alpha), args.repeats)
    t_hard = best_time(lambda: hard_step(x, int(args.k), grad), args.repeats)
    result = {
        "benchmark": "soft_topk_vs_hard_topk",
        "shape": [args.rows, args.n], "k": args.k, "alpha": args.alpha, "device": args.device,
        "dtype": "float32", "threads": torch.get_num_threads(),
        "soft_fwd_bwd_s": t_soft, "hard_fwd_bwd_s": t_hard, "time_ratio": t_soft / t_hard,
        "target_time_ratio": 2.0,
    }
    if args.device == "cpu":
        common = ["--rows", str(args.rows), "--n", str(args.n), "--k", str(args.k),
                  "--alpha", str(args.alpha)]
        soft_mem = run_child("benchmarks.soft_topk", "--memory-child", "soft", *common)
        hard_mem = run_child("benchmarks.soft_topk", "--memory-child", "hard", *common)
        result.update({
            "input_bytes": soft_mem["input_bytes"],
            "soft_peak_extra_bytes": soft_mem["extra_bytes"],
            "hard_peak_extra_bytes": hard_mem["extra_bytes"],
            "soft_peak_extra_over_input": soft_mem["extra_bytes"] / soft_mem["input_bytes"],
            "hard_peak_extra_over_input": hard_mem["extra_bytes"] / hard_mem["input_bytes"],
            "target_peak_extra_over_input": 3.0,
        })
    else:
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        soft_step(x, kk, grad, args.alpha)
        result["soft_peak_extra_over_input"] = (torch.cuda.max_memory_allocated() - base) / (x.numel() * 4)
    mem_ratio = result.get("soft_peak_extra_over_input", 0.0)
    result["meets_targets"] = result["time_ratio"] <= 2.0 and mem_ratio <= 3.0
    emit(result)


if __name__ == "__main__":
    main()
