"""Geometric median by Weiszfeld iterations, used to initialise b_dec (``docs/method.md`` §1.1)."""

from __future__ import annotations

import torch


def geometric_median(x: torch.Tensor, max_iter: int = 100, tol: float = 1e-5,
                     eps: float = 1e-12) -> torch.Tensor:
    """argmin_g Σ_i ‖x_i − g‖ for x: (N, d); returns (d,).

    Starts at the mean and stops when the update moves less than ``tol``. Unlike the official
    code, distances are floored at ``eps`` so a point coinciding with the estimate cannot
    produce an infinite weight.
    """
    if x.dim() != 2 or x.shape[0] == 0:
        raise ValueError(f"geometric_median expects a non-empty (N, d) tensor, got {tuple(x.shape)}")
    xd = x.detach().double()
    g = xd.mean(dim=0)
    for _ in range(max_iter):
        w = 1.0 / (xd - g).norm(dim=1).clamp_min(eps)
        g_new = (w.unsqueeze(1) * xd).sum(dim=0) / w.sum()
        moved = (g_new - g).norm()
        g = g_new
        if moved < tol:
            break
    return g.to(x.dtype)
