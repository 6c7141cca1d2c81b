"""Time per training step of SoftSAE vs TopK through the shared trainer, in one run.

Setting of the issue: d = 768, F = 16384, batch 4096, CPU. Target: SoftSAE ≤ 1.6× TopK (its
k-estimator adds one d×F matmul forward and two backward). Steps are timed with the trainer's
``on_step`` hook; step 0 (geometric-median init) is excluded, and the two models alternate in
rounds so that machine noise hits both alike.

    python -m benchmarks.train_step [--d 768 --F 16384 --batch 4096 --steps 3 --rounds 2]
"""

from __future__ import annotations

import argparse
import time

import torch

from benchmarks._common import emit
from softsae_lib import SoftSAE, TopKSAE, TrainConfig, train_sae


def step_times(model, data: torch.Tensor, steps: int, device: str) -> list[float]:
    stamps: list[float] = []
    cfg = TrainConfig(steps=steps + 1, batch_size=data.shape[0], lr=1e-4, warmup_steps=0,
                      alpha_anneal_steps=None, normalization_batches=1, device=device, progress=False)

    def on_step(step: int, terms: dict) -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        stamps.append(time.perf_counter())

    train_sae(model, data, cfg, on_step=on_step)
    return [b - a for a, b in zip(stamps[:-1], stamps[1:], strict=True)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--d", type=int, default=768)
    ap.add_argument("--F", type=int, default=16384)
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--k", type=int, default=64)
    ap.add_argument("--steps", type=int, default=3, help="timed steps per round and model")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    data = torch.randn(args.batch, args.d, generator=torch.Generator().manual_seed(0))
    times: dict[str, list[float]] = {"soft": [], "topk": []}
    for r in range(args.rounds):
        for name, cls in (("soft", SoftSAE), ("topk", TopKSAE)):
            model = cls(d_model=args.d, dict_size=args.F, k=args.k, seed=r)
            times[name] += step_times(model, data, args.steps, args.device)
            del model
    soft, topk = min(times["soft"]), min(times["topk"])
    emit({
        "benchmark": "train_step_softsae_vs_topk", "device": args.device, "threads": torch.get_num_threads(),
        "d_model": args.d, "dict_size": args.F, "batch": args.batch, "k": args.k,
        "softsae_step_s": soft, "topk_step_s": topk, "ratio": soft / topk, "target_ratio": 1.6,
        "meets_target": soft / topk <= 1.6, "all_step_times_s": times,
    })


if __name__ == "__main__":
    main()
