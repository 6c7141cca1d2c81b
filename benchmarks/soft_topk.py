"""Soft top-k (LapSum) vs hard top-k + scatter: forward+backward time and peak extra memory.

Setting: x = relu(randn(4096, 16384)) fp32, k ≈ 64 per row, α = 1e-2.
Targets on the 2-core CPU: time ratio ≤ 1.5, peak extra memory ≤ 3× the input.
Both operators run alternately in one process (soft, hard, soft, hard, ...); ``paired_ratio``, the
median over rounds of soft/hard within a round, is the figure checked against the target (it is
far steadier on a shared machine than a ratio of separately taken times, also reported:
``time_ratio`` is the ratio of the median times). Memory is measured in a fresh child process
per operator (the process's peak RSS above the level after building the input).

On a machine shared with other jobs, run with ``OMP_WAIT_POLICY=PASSIVE``: with libgomp's default
spin-waiting, every parallel region waits for a descheduled partner thread, which inflates the
many-small-op soft path far more than the few-large-op hard path.

    python -m benchmarks.soft_topk [--rows 4096 --n 16384 --k 64 --alpha 1e-2 --device cpu]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics

import torch

from benchmarks._common import emit, peak_rss_bytes, run_child, timed
from softsae_lib.ops import soft_topk

TARGET_RATIO = 1.5


def paired_times(fa, fb, repeats: int, warmup: int = 1) -> tuple[list[float], list[float]]:
    """Wall times of ``fa`` and ``fb`` run alternately ``repeats`` times after ``warmup`` pairs."""
    for _ in range(warmup):
        fa()
        fb()
    ta: list[float] = []
    tb: list[float] = []
    for _ in range(repeats):
        for f, out in ((fa, ta), (fb, tb)):
            out.append(timed(f))
    return ta, tb


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
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--memory-child", choices=["soft", "hard"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.memory_child:
        _memory_child(args.memory_child, args.rows, args.n, args.k, args.alpha)
        return
    x, kk, grad = make_inputs(args.rows, args.n, args.k, args.device)
    soft_times, hard_times = paired_times(lambda: soft_step(x, kk, grad, args.alpha),
                                          lambda: hard_step(x, int(args.k), grad), args.repeats)
    t_soft, t_hard = statistics.median(soft_times), statistics.median(hard_times)
    paired = statistics.median(a / b for a, b in zip(soft_times, hard_times, strict=True))
    result = {
        "benchmark": "soft_topk_vs_hard_topk",
        "shape": [args.rows, args.n], "k": args.k, "alpha": args.alpha, "device": args.device,
        "dtype": "float32", "threads": torch.get_num_threads(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "soft_fwd_bwd_s": t_soft, "hard_fwd_bwd_s": t_hard, "time_ratio": t_soft / t_hard,
        "paired_ratio": paired, "soft_times_s": soft_times, "hard_times_s": hard_times,
        "target_time_ratio": TARGET_RATIO,
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
    result["meets_targets"] = paired <= TARGET_RATIO and mem_ratio <= 3.0
    emit(result)


if __name__ == "__main__":
    main()
