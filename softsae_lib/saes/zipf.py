"""Zipf-shaped budgets and the aux-Zipf auxiliary loss for Feature / Mutual Choice SAEs.

Source: Ayonrinde 2024, arXiv 2411.02124. Its abstract and reviews establish that (i) Feature Choice
gives every feature j a token capacity m_j, set from a Zipf fit to feature densities, and (ii)
``aux_zipf_loss`` "generalises aux_k_loss to mitigate dead *and underutilised* features". The method
section could not be retrieved from public sources (docs/sae-variants.md §6 marks it unverified), so the
exact formulas here are **our documented variant**, not the paper's:

* **Zipf profile** [ours]: the feature of rank r (1 = most used) gets weight r^(−s); weights are
  scaled to a total and water-filled under a per-feature cap (a density cannot exceed 1, a capacity
  cannot exceed the batch size), then rounded by largest remainder so the total is exact.
* **aux-Zipf variant** [ours]: target density of the rank-r feature ρ*_r = Zipf profile with total k
  and cap 1. A feature is *underused* when its running density is below γ·ρ*(its rank). The AuxK
  construction (docs/sae-variants.md §0) is applied to the underused set instead of the dead set. Dead
  features (density 0) are always underused, so this generalises AuxK.
"""

from __future__ import annotations

import torch

from softsae_lib.saes.auxk import auxk_loss

__all__ = ["zipf_weights", "water_fill", "allocate_integer", "zipf_targets", "underused_mask",
           "aux_zipf_variant_loss"]


def zipf_weights(n: int, exponent: float) -> torch.Tensor:
    """(n,) float64 weights r^(−exponent) for ranks r = 1…n (exponent 0 gives uniform weights)."""
    if n < 1:
        raise ValueError(f"zipf_weights: n must be ≥ 1, got {n}")
    if exponent < 0:
        raise ValueError(f"zipf_weights: exponent must be ≥ 0, got {exponent}")
    return torch.arange(1, n + 1, dtype=torch.float64).pow(-exponent)


def water_fill(weights: torch.Tensor, total: float, cap: float) -> torch.Tensor:
    """Real allocation a_i ∝ w_i with Σ a = total and a_i ≤ cap (overflow is redistributed).

    Args:
        weights: (n,) non-negative weights; all-zero weights are treated as uniform.
        total: amount to distribute, 0 ≤ total ≤ n·cap.
        cap: per-entry maximum.
    Returns:
        (n,) float64 allocation.
    """
    w = weights.detach().to(torch.float64).clone()
    n = w.numel()
    if (w < 0).any() or not torch.isfinite(w).all():
        raise ValueError("water_fill: weights must be finite and non-negative")
    if total < 0 or total > n * cap * (1 + 1e-12):
        raise ValueError(f"water_fill: total {total} is outside [0, n·cap = {n * cap}]")
    if w.sum() == 0:
        w.fill_(1.0)
    alloc = torch.zeros(n, dtype=torch.float64)
    free = torch.ones(n, dtype=torch.bool)
    remaining = float(total)
    while remaining > 0 and free.any():
        wf = torch.where(free, w, torch.zeros_like(w))
        if wf.sum() == 0:  # only zero-weight entries left: share evenly
            wf = free.to(torch.float64)
        share = remaining * wf / wf.sum()
        over = free & (share > cap)
        if not over.any():
            alloc = alloc + share
            break
        alloc[over] = cap
        remaining -= cap * int(over.sum())
        free &= ~over
    return alloc


def allocate_integer(alloc: torch.Tensor, total: int) -> torch.Tensor:
    """Round a real allocation (Σ alloc = total) to integers with the same sum (largest remainder).

    Ties in the fractional parts go to the lower index. Returns (n,) long.
    """
    base = torch.floor(alloc + 1e-9).to(torch.long)
    short = int(total) - int(base.sum())
    if short < 0 or short > alloc.numel():
        raise ValueError(f"allocate_integer: allocation sums to {float(alloc.sum())}, not {total}")
    if short:
        frac = alloc - base.to(torch.float64)
        order = torch.sort(-frac, stable=True).indices  # largest remainder first, lower index on ties
        base[order[:short]] += 1
    return base


def zipf_targets(scores: torch.Tensor, exponent: float, total: float, cap: float) -> torch.Tensor:
    """Zipf-shaped real budget per feature, ranked by ``scores`` (largest score = rank 1).

    Args:
        scores: (F,) ranking statistic (e.g. a running density or affinity); ties keep index order.
    Returns:
        (F,) float64 budget: the rank-r feature gets the r-th entry of the water-filled Zipf profile.
    """
    F = scores.numel()
    profile = water_fill(zipf_weights(F, exponent), total, cap)
    order = torch.sort(-scores.detach().to(torch.float64).cpu(), stable=True).indices
    out = torch.empty(F, dtype=torch.float64)
    out[order] = profile
    return out.to(scores.device)


def underused_mask(density: torch.Tensor, k: float, exponent: float, gamma: float) -> torch.Tensor:
    """(F,) bool: running density below γ times the Zipf target density at the feature's rank."""
    target = zipf_targets(density, exponent, total=float(k), cap=1.0).to(density.dtype)
    return density < gamma * target


def aux_zipf_variant_loss(pre_acts: torch.Tensor, residual: torch.Tensor, density: torch.Tensor,
                          W_dec: torch.Tensor, k: float, k_aux: int, exponent: float = 1.0,
                          gamma: float = 0.1) -> tuple[torch.Tensor, int]:
    """Our aux-Zipf variant: AuxK (normalised) on the features that fall below their Zipf target.

    Args:
        pre_acts: (B, F) non-negative pre-selection activations.
        residual: (B, d) e = x_n − x̂_n (detached inside).
        density: (F,) running firing density of each feature.
        W_dec: (F, d) decoder.
        k: mean active features per sample (the Zipf targets sum to k).
        k_aux: features per sample used by the auxiliary reconstruction.
    Returns:
        ``(loss, n_underused)``; the loss is 0 when no feature is underused.
    """
    mask = underused_mask(density, k, exponent, gamma)
    return auxk_loss(pre_acts, residual, mask, W_dec, k_aux), int(mask.sum())
