"""Positive controls, bounds, seed pooling and parallel jobs of the experiments layer."""

from __future__ import annotations

import functools

import numpy as np
import pandas as pd
import torch

from softsae_lib.data.subspaces import subspace_union
from softsae_lib.experiments.controls import (
    allocation_bound,
    budget_tolerance,
    explanation_length,
    subspace_oracle,
    supervised_k_capacity,
)
from softsae_lib.experiments.parallel import run_jobs
from softsae_lib.experiments.seeds import seed_association
from softsae_lib.ops.matching_pursuit import orthogonal_matching_pursuit
from softsae_lib.saes import make_sae
from softsae_lib.stats import correlations


def test_oracle_finds_the_dimension_and_the_bound_is_below_one_at_a_small_budget():
    s = subspace_union(1600, 32, dims=(1, 2, 4, 8), noise=0.0, seed=0)
    k, path = subspace_oracle(s, tolerance=1e-8)
    assert torch.equal(k, s.dim)
    assert torch.equal(s.atom_subspace()[path.support[:, 0]], s.subspace_id)  # atoms of its own basis
    d, cl = s.dim.numpy(), s.subspace_id.numpy()
    full = allocation_bound(path, float(d.mean()), d, cl, n_boot=50)
    assert full["spearman"] > 0.95 and abs(full["allocated_mean"] - d.mean()) < 1e-3
    # with 2 atoms per sample on average the optimum cannot give the 8-dimensional points 8
    tight = allocation_bound(path, 2.0, d, cl, n_boot=50)
    assert tight["spearman"] < full["spearman"]


def test_explanation_length_uses_the_models_decoder_in_its_own_space():
    s = subspace_union(400, 16, dims=(1, 3), noise=0.0, seed=3)
    model = make_sae("topk", d_model=16, dict_size=4, k=2, seed=0)
    with torch.no_grad():  # a decoder that holds the four true atoms, b_dec = 0, scale 1
        model.W_dec.copy_(s.dictionary())
        model.b_dec.zero_()
        model.norm_scale.fill_(2.0)  # normalisation is a scale: atom counts do not change
    k, _ = explanation_length(model, s.x, max_atoms=4, tolerance=1e-8)
    assert torch.equal(k, s.dim)


def test_the_budget_tolerance_makes_the_median_sample_need_the_budget():
    # a large common offset: 5% of ‖x‖² is reached by one atom everywhere, the budget rule still ranks d
    s = subspace_union(1600, 32, dims=(1, 2, 4, 8), noise=0.0, seed=0)
    direction = torch.randn(1, 32, generator=torch.Generator().manual_seed(1))
    offset = 6 * s.x.norm(dim=1).mean() * torch.nn.functional.normalize(direction)
    x = s.x + offset
    dictionary = torch.cat([s.dictionary(), offset])
    path = orthogonal_matching_pursuit(x, dictionary, 12)
    assert (path.atoms_needed(0.05) <= 1).float().mean() > 0.9  # the fixed tolerance sees nothing
    tol = budget_tolerance(path, 4.0)
    assert tol == float(path.rel_error[:, 4].median())
    atoms = path.atoms_needed(tol)
    assert 0.4 <= (atoms <= 4).float().mean() <= 0.7
    assert correlations(atoms.numpy(), s.dim.numpy())["spearman"] > 0.8
    assert budget_tolerance(path, 100.0) == float(path.rel_error[:, -1].median())  # capped at the path


def test_the_supervised_k_estimator_can_learn_the_dimension():
    s = subspace_union(3000, 16, dims=(1, 2, 4, 8), noise=0.01, seed=1)
    pred = supervised_k_capacity(s.x[:2500], s.dim[:2500], s.x[2500:], k=4, dict_size=64, steps=400, lr=3e-3)
    assert pred.shape == (500,)
    assert correlations(pred.numpy(), s.dim[2500:].numpy())["spearman"] > 0.6


def test_seed_association_reports_each_seed_and_a_pooled_row():
    rng = np.random.default_rng(0)
    target = np.repeat(np.arange(1, 11), 40).astype(float)
    clusters = np.repeat(np.arange(10), 40)
    frames = {s: pd.DataFrame({"k": target * (1 + s) + rng.normal(0, 2, 400), "d": target, "c": clusters})
              for s in range(3)}
    frames[3] = frames[0].assign(k=1.0)  # a constant column is reported, not dropped
    table = seed_association(frames, "k", "d", "c", n_boot=100)
    assert table["seed"].tolist() == [0, 1, 2, 3, "pooled"]
    assert (table.loc[:2, "spearman"] > 0.8).all() and np.isnan(table.loc[3, "spearman"])
    pooled = table.iloc[-1]
    assert pooled["n"] == 1200 and pooled["spearman_ci_low"] < pooled["spearman"] < pooled["spearman_ci_high"]
    assert pooled["spearman"] > 0.8  # the per-seed scale (1 + s) does not dilute it: within-seed ranks


def _seeded_sum(seed: int, n: int) -> float:
    return float(torch.randn(n, generator=torch.Generator().manual_seed(seed)).sum())


def test_parallel_jobs_equal_sequential_ones():
    jobs = {s: functools.partial(_seeded_sum, s, 1000) for s in range(3)}
    assert run_jobs(jobs, workers=2) == run_jobs(jobs, workers=1)
