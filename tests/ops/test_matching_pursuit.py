"""Orthogonal matching pursuit and the optimal budget allocation."""

from __future__ import annotations

import pytest
import torch

from softsae_lib.data.subspaces import subspace_union
from softsae_lib.ops.matching_pursuit import optimal_allocation, orthogonal_matching_pursuit


def test_omp_recovers_exact_sparse_codes_in_an_orthonormal_dictionary():
    s = subspace_union(600, 32, dims=(1, 2, 5), noise=0.0, seed=0)
    path = orthogonal_matching_pursuit(s.x, s.dictionary(), max_atoms=8)
    needed = path.atoms_needed(1e-10)
    assert torch.equal(needed, s.dim)  # exactly d atoms reach zero error, fewer do not
    # the chosen atoms are those of the sample's own subspace
    own = s.atom_subspace()[path.support[:, 0]]
    assert torch.equal(own, s.subspace_id)
    assert torch.all(path.rel_error[:, 0] == 1) and torch.all(path.rel_error[:, 1:].diff(dim=1) <= 1e-12)


def test_omp_errors_are_least_squares_errors_on_the_chosen_atoms():
    # correlated atoms: plain matching pursuit (no refit) would leave a larger residual
    g = torch.Generator().manual_seed(0)
    atoms = torch.nn.functional.normalize(torch.randn(12, 6, generator=g) + 1.5, dim=1).double()
    x = torch.randn(20, 6, generator=g, dtype=torch.float64)
    path = orthogonal_matching_pursuit(x, atoms, max_atoms=4)
    for i in range(20):
        for t in (1, 2, 4):
            A = atoms[path.support[i, :t]].T  # (6, t)
            coef = torch.linalg.lstsq(A, x[i:i + 1].T).solution
            err = (x[i:i + 1].T - A @ coef).pow(2).sum() / x[i].pow(2).sum()
            assert torch.isclose(path.rel_error[i, t], err, rtol=1e-6, atol=1e-12)
    assert len(set(path.support[0].tolist())) == 4  # an atom is never chosen twice


def test_atoms_needed_beyond_the_path_and_input_errors():
    s = subspace_union(50, 16, dims=(6,), noise=0.0, seed=1)
    path = orthogonal_matching_pursuit(s.x, s.dictionary(), max_atoms=3)
    assert torch.all(path.atoms_needed(1e-10) == 4)  # never reached within 3 atoms: T + 1
    with pytest.raises(ValueError, match="max_atoms"):
        orthogonal_matching_pursuit(s.x, s.dictionary(), max_atoms=7)
    with pytest.raises(ValueError, match="dictionary"):
        orthogonal_matching_pursuit(s.x, s.dictionary()[:, :5], max_atoms=2)


def test_optimal_allocation_takes_the_largest_gains_and_keeps_the_mean():
    # sample 0 gains 0.9 then 0.1; sample 1 gains 0.5, 0.4; sample 2 gains 0.2, 0.2
    rel = torch.tensor([[1.0, 0.1, 0.0], [1.0, 0.5, 0.1], [1.0, 0.8, 0.6]], dtype=torch.float64)
    assert optimal_allocation(rel, 1.0).tolist() == [1, 2, 0]  # gains taken: 0.9, 0.5, 0.4
    assert optimal_allocation(rel, 0.0).tolist() == [0, 0, 0]
    assert optimal_allocation(rel, 2.0).tolist() == [2, 2, 2]
    assert optimal_allocation(rel, 4 / 3).sum() == 4
    with pytest.raises(ValueError, match="mean_budget"):
        optimal_allocation(rel, 2.5)
