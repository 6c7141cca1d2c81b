"""Union of linear subspaces: the exact-optimum generator."""

from __future__ import annotations

import pytest
import torch

from softsae_lib.data.subspaces import subspace_union
from softsae_lib.stats import correlations


def test_samples_lie_in_their_subspace_with_exactly_d_coordinates():
    s = subspace_union(3000, 40, dims=(1, 3, 7, 12), noise=0.0, seed=2)
    assert s.x.shape == (3000, 40) and torch.equal(s.x, s.x_clean)
    for m, basis in enumerate(s.bases):
        rows = s.subspace_id == m
        d = basis.shape[1]
        assert torch.equal(s.dim[rows], torch.full((int(rows.sum()),), d))
        coords = s.x[rows] @ basis  # orthonormal basis: the coordinates are the code
        assert torch.allclose(coords @ basis.T, s.x[rows], atol=1e-5)
        assert torch.allclose(coords, s.coords[rows, :d], atol=1e-5)
        assert torch.all(s.coords[rows, d:] == 0)
        assert torch.allclose(basis.T @ basis, torch.eye(d), atol=1e-5)
    assert s.dictionary().shape == (23, 40) and s.atom_subspace().tolist().count(3) == 12


def test_the_norm_does_not_reveal_the_dimension():
    s = subspace_union(20000, 64, noise=0.0, seed=0)
    rho = correlations(s.x.norm(dim=1).numpy(), s.dim.numpy())["spearman"]
    assert abs(rho) < 0.03
    # the naive Gaussian in the subspace would give ρ ≈ 0.9; the radius law is shared
    assert s.x.norm(dim=1).min() >= 0.5 - 1e-5 and s.x.norm(dim=1).max() <= 1.5 + 1e-5


def test_deterministic_and_validated():
    a, b = subspace_union(100, 8, dims=(1, 2), seed=5), subspace_union(100, 8, dims=(1, 2), seed=5)
    assert torch.equal(a.x, b.x)
    assert not torch.equal(a.x, subspace_union(100, 8, dims=(1, 2), seed=6).x)
    with pytest.raises(ValueError, match="ambient_dim=8"):
        subspace_union(100, 8, dims=(1, 9))
    with pytest.raises(ValueError, match="radius_range"):
        subspace_union(100, 8, dims=(1,), radius_range=(1.0, 1.0))
