"""Peak CPU memory of SAE training at scale: can F = 65536, d = 768, batch 4096 train in 24 GB?

Each architecture runs in a fresh child process (its own VmHWM): build the model, run ``--steps``
training steps through the shared trainer on random data, report the peak resident memory. The
JSON lists every (arch, F) measured and the largest F that fits ``--limit-gib``.

    python -m benchmarks.memory [--d 768 --F 65536 --batch 4096 --steps 2 --archs soft topk]
"""

from __future__ import annotations

import argparse
import json

import torch

from benchmarks._common import emit, peak_rss_bytes, run_child


def _child(arch: str, d: int, f: int, batch: int, k: int, steps: int) -> None:
    from softsae_lib import TrainConfig, train_sae
    from softsae_lib.saes import make_sae

    data = torch.randn(batch, d, generator=torch.Generator().manual_seed(0))
    model = make_sae(arch, d_model=d, dict_size=f, k=k)
    cfg = TrainConfig(steps=steps, batch_size=batch, lr=1e-4, warmup_steps=0, normalization_batches=1,
                      progress=False)
    train_sae(model, data, cfg)
    print(json.dumps({"peak_bytes": peak_rss_bytes()}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--d", type=int, default=768)
    ap.add_argument("--F", type=int, nargs="+", default=[65536])
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--k", type=int, default=64)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--archs", nargs="+", default=["soft", "topk"])
    ap.add_argument("--limit-gib", type=float, default=24.0)
    ap.add_argument("--child", nargs=6, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        arch, *nums = args.child
        _child(arch, *map(int, nums))
        return
    rows = []
    for f in args.F:
        for arch in args.archs:
            out = run_child("benchmarks.memory", "--child", arch, str(args.d), str(f), str(args.batch),
                            str(args.k), str(args.steps))
            rows.append({"arch": arch, "dict_size": f, "peak_gib": out["peak_bytes"] / 2**30})
    fits = [r["dict_size"] for r in rows if r["peak_gib"] <= args.limit_gib]
    # the target: every architecture at every size within the machine's memory (--limit-gib)
    all_fit = all(r["peak_gib"] <= args.limit_gib for r in rows)
    emit({"benchmark": "train_memory_cpu", "d_model": args.d, "batch": args.batch, "k": args.k,
          "steps": args.steps, "limit_gib": args.limit_gib, "runs": rows,
          "largest_dict_size_within_limit": max(fits) if fits else None,
          "all_fit": all_fit, "meets_targets": all_fit})


if __name__ == "__main__":
    main()
