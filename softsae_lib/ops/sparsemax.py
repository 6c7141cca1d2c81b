"""Sparsemax (Martins & Astudillo 2016, arXiv 1602.02068) in closed form, with its analytic Jacobian.

For scores s ∈ ℝⁿ sorted in descending order, s₍₁₎ ≥ … ≥ s₍ₙ₎:

    k(s) = max{ j : 1 + j·s₍ⱼ₎ > Σ_{r≤j} s₍ᵣ₎ }        (the condition holds exactly for j ≤ k(s))
    τ(s) = (Σ_{r≤k(s)} s₍ᵣ₎ − 1) / k(s)
    sparsemax(s) = max(s − τ, 0),   support 𝒮 = { i : s_i > τ },   |𝒮| = k(s)

The Jacobian is J = diag(1_𝒮) − 1_𝒮 1_𝒮ᵀ/|𝒮| (paper Eq. 12), so a vector-Jacobian product is
g ↦ 1_𝒮 ⊙ (g − mean_{𝒮} g). The sparsemax SAE (arXiv 2604.14925) uses the support as its
per-input sparsity; this module is pure torch and works on any dimension.
"""

from __future__ import annotations

import torch

__all__ = ["sparsemax", "sparsemax_threshold", "sparsemax_support"]

_WINDOW = 64
"""Initial top-K window of the threshold search."""


def _threshold_last(s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """τ: (..., 1) and k(s): (..., 1) long for scores s: (..., n) along the last dimension."""
    n = s.shape[-1]
    if n == 0:
        raise ValueError("sparsemax needs at least one score along its dimension")
    # The condition 1 + j·s₍ⱼ₎ > Σ_{r≤j} s₍ᵣ₎ holds exactly on a prefix j ≤ k(s), so the top-K window
    # suffices once it fails at j = K in every row; supports are usually far smaller than n, and a
    # top-K is much cheaper than a full sort. The window grows ×4 until that holds (or K = n).
    width = min(n, _WINDOW)
    while True:
        s_sorted = torch.topk(s, width, dim=-1, sorted=True).values
        cumsum = s_sorted.cumsum(dim=-1)
        j = torch.arange(1, width + 1, device=s.device, dtype=s.dtype)
        holds = 1 + j * s_sorted > cumsum
        if width == n or not bool(holds[..., -1].any()):
            break
        width = min(n, 4 * width)
    k = holds.sum(dim=-1, keepdim=True).clamp_min(1)  # j = 1 always holds
    tau = (cumsum.gather(-1, k - 1) - 1) / k.to(s.dtype)
    return tau, k


def sparsemax_threshold(s: torch.Tensor, dim: int = -1) -> tuple[torch.Tensor, torch.Tensor]:
    """Closed-form threshold τ(s) and support size k(s), both with ``dim`` kept as size 1.

    Args:
        s: scores of any shape; the simplex projection runs along ``dim``.
    Returns:
        ``(tau, k)``: tau has s's dtype, k is long; both have s's shape with ``dim`` reduced to 1.
    """
    if not s.is_floating_point():
        raise TypeError(f"sparsemax needs floating-point scores, got {s.dtype}")
    if not torch.isfinite(s).all():
        raise ValueError("sparsemax: scores contain NaN or Inf")
    tau, k = _threshold_last(s.detach().movedim(dim, -1))
    return tau.movedim(-1, dim), k.movedim(-1, dim)


def sparsemax_support(s: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Boolean support mask 1[s_i > τ(s)] of the same shape as ``s``."""
    tau, _ = sparsemax_threshold(s, dim)
    return s.detach() > tau


class _Sparsemax(torch.autograd.Function):
    @staticmethod
    def forward(ctx, s: torch.Tensor, dim: int) -> torch.Tensor:
        tau, _ = sparsemax_threshold(s, dim)
        p = (s - tau).clamp_min(0)
        ctx.save_for_backward(p)
        ctx.dim = dim
        return p

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        (p,) = ctx.saved_tensors
        support = (p > 0).to(g.dtype)
        size = support.sum(dim=ctx.dim, keepdim=True)
        mean_on_support = (g * support).sum(dim=ctx.dim, keepdim=True) / size
        return support * (g - mean_on_support), None


def sparsemax(s: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Euclidean projection of ``s`` onto the probability simplex along ``dim`` (differentiable).

    Returns p of the same shape with p ≥ 0, Σ p = 1 along ``dim`` and p_i > 0 exactly on the support.
    """
    return _Sparsemax.apply(s, dim)
