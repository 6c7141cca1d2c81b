"""Synthetic activations with known ground truth."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class SparseSuperposition:
    """Samples x = Σ_{i∈S} c_i f_i + noise with a per-sample number of active features |S|."""

    x: torch.Tensor
    """(N, d) samples."""
    features: torch.Tensor
    """(n_features, d) unit-norm ground-truth directions f_i."""
    codes: torch.Tensor
    """(N, n_features) non-negative true coefficients (zero off the support)."""
    n_active: torch.Tensor
    """(N,) true number of active features per sample."""


def sparse_superposition(n_samples: int, d: int, n_features: int, min_active: int = 1,
                         max_active: int = 8, noise: float = 0.01, seed: int = 0) -> SparseSuperposition:
    """F ground-truth unit directions in R^d; each sample activates a uniform number in
    [min_active, max_active] of them, chosen uniformly, with coefficients U(0.5, 1.5).

    Deterministic given ``seed``. The true active count is the "complexity" SoftSAE's k̂ should track.
    """
    if not 1 <= min_active <= max_active <= n_features:
        raise ValueError(f"need 1 ≤ min_active ≤ max_active ≤ n_features, got "
                         f"{min_active}, {max_active}, {n_features}")
    gen = torch.Generator().manual_seed(seed)
    features = torch.nn.functional.normalize(torch.randn(n_features, d, generator=gen), dim=1)
    n_active = torch.randint(min_active, max_active + 1, (n_samples,), generator=gen)
    # A random permutation per row; its first n_active entries form the support.
    order = torch.rand(n_samples, n_features, generator=gen).argsort(dim=1)
    support = torch.zeros(n_samples, n_features, dtype=torch.bool)
    support.scatter_(1, order, torch.arange(n_features).expand(n_samples, -1) < n_active.unsqueeze(1))
    coeffs = torch.rand(n_samples, n_features, generator=gen) + 0.5
    codes = coeffs * support
    x = codes @ features + noise * torch.randn(n_samples, d, generator=gen)
    return SparseSuperposition(x=x, features=features, codes=codes, n_active=n_active)
