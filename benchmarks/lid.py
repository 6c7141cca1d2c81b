"""Per-point MLE intrinsic dimension: softsae_lib.lid (exact knn + mle) vs skdim.id.MLE, in one run.

Setting: N = 20000 points, D = 768, K = 20 (skdim.id.MLE's default n_neighbors), float32. The data
are a low-dimensional manifold in 768-D: the uniform 9-sphere S⁹ ⊂ R¹⁰ (radius 1) mapped into R⁷⁶⁸ by
a random orthonormal frame (``--data gaussian`` uses iid N(0, 1) coordinates instead). skdim computes
its own neighbours (sklearn NearestNeighbors, brute force for this D) on the same float32 array.
``max_rel_diff_pointwise`` reflects sklearn's float32 distance path (ArgKmin on float32 input): on a
float64 copy of the same points skdim agrees with this library to ~1e-14.
Target on the 2-core CPU: ≥ 5× faster. Both libraries use the same number of threads (``--threads``,
default: torch's default; sklearn's OpenMP/BLAS pools are limited to the same number).

    python -m benchmarks.lid [--n 20000 --d 768 --k 20 --manifold-dim 9 --repeats 2 --threads 1]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from benchmarks._common import best_time, emit
from softsae_lib.lid import knn, mle


def make_data(n: int, d: int, manifold_dim: int, kind: str, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    if kind == "gaussian":
        return torch.randn(n, d, generator=gen)
    z = torch.randn(n, manifold_dim + 1, generator=gen, dtype=torch.float64)
    z = z / z.norm(dim=1, keepdim=True)
    frame, _ = torch.linalg.qr(torch.randn(d, manifold_dim + 1, generator=gen, dtype=torch.float64))
    return (z @ frame.T).float()


def ours(x: torch.Tensor, k: int) -> torch.Tensor:
    dist, _ = knn(x, k)
    return mle(dist)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--d", type=int, default=768)
    ap.add_argument("--k", type=int, default=20)
    ap.add_argument("--manifold-dim", type=int, default=9)
    ap.add_argument("--data", choices=["sphere", "gaussian"], default="sphere")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--skdim-repeats", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    import skdim
    from threadpoolctl import threadpool_limits

    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()

    x = make_data(args.n, args.d, args.manifold_dim, args.data)
    xd, xn = x.to(args.device), x.numpy()
    res: dict[str, np.ndarray] = {}

    def run_ours() -> None:
        res["ours"] = ours(xd, args.k).cpu().numpy()

    def run_skdim() -> None:
        with threadpool_limits(threads):
            res["skdim"] = skdim.id.MLE().fit(xn, n_neighbors=args.k).dimension_pw_

    t_ours = best_time(run_ours, args.repeats, warmup=1)
    t_skdim = best_time(run_skdim, args.skdim_repeats, warmup=0)
    rel = np.abs(res["ours"] / res["skdim"] - 1)
    emit({
        "benchmark": "lid_mle_vs_skdim",
        "n": args.n, "d": args.d, "k": args.k, "device": args.device, "dtype": "float32",
        "data": (f"uniform S^{args.manifold_dim} in R^{args.manifold_dim + 1}, random orthonormal frame "
                 f"into R^{args.d}") if args.data == "sphere" else "iid N(0,1)",
        "threads": threads,
        "ours_knn_mle_s": t_ours, "skdim_mle_s": t_skdim, "speedup": t_skdim / t_ours,
        "target_speedup": 5.0,
        "max_rel_diff_pointwise": float(rel.max()), "median_rel_diff_pointwise": float(np.median(rel)),
        "median_id_ours": float(np.median(res["ours"])), "median_id_skdim": float(np.median(res["skdim"])),
        "meets_target": t_skdim / t_ours >= 5.0,
    })


if __name__ == "__main__":
    main()
