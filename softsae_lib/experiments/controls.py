"""Positive controls and bounds for "does the per-sample budget follow the true complexity?" (issue 12).

A correlation between k̂ and the truth means little on its own: it must be judged against what the
test can detect and what a budget at that mean can reach.

* :func:`oracle_budgets`: atoms a dictionary needs per sample (orthogonal matching pursuit to a fixed
  relative error); :func:`subspace_oracle` runs it on each sample's own true basis, the exact oracle of
  a union of subspaces: the test's positive control, where it should find a strong effect.
* :func:`explanation_length`: the same for a trained SAE's decoder (the direct test of "k̂ is the
  explanation length"), at a fixed tolerance or the one :func:`budget_tolerance` ties to the budget.
* :func:`allocation_bound`: the rank correlation an *optimal* allocation of the realised mean budget
  reaches (:func:`softsae_lib.ops.matching_pursuit.optimal_allocation`): the ceiling for a learned k̂.
* :func:`supervised_k_capacity`: SoftSAE's k-estimator MLP trained by regression on the truth: can the
  estimator express the mapping at all?
"""

from __future__ import annotations

import numpy as np
import torch

from softsae_lib.data.subspaces import SubspaceUnion
from softsae_lib.ops.matching_pursuit import PursuitPath, optimal_allocation, orthogonal_matching_pursuit
from softsae_lib.saes import SAE, make_sae
from softsae_lib.stats import summarize_association

TOLERANCE = 0.05
"""Relative squared error ‖x − x̂‖²/‖x‖² at which a sample counts as explained."""


def oracle_budgets(x: torch.Tensor, dictionary: torch.Tensor, max_atoms: int,
                   tolerance: float = TOLERANCE) -> tuple[torch.Tensor, PursuitPath]:
    """Atoms of ``dictionary`` (M, D) that OMP needs to explain each row of ``x`` (N, D): ((N,), path)."""
    path = orthogonal_matching_pursuit(x, dictionary, max_atoms)
    return path.atoms_needed(tolerance), path


def subspace_oracle(data: SubspaceUnion, tolerance: float = TOLERANCE) -> tuple[torch.Tensor, PursuitPath]:
    """OMP of every sample of ``data`` on its own subspace's true basis: ((N,) atoms needed, paths).

    With the support known this is exact: the sparsest code within ``tolerance`` keeps the largest true
    coefficients. (OMP over the union of all bases can pick another subspace's atom, since the bases
    are not mutually orthogonal.) Paths are padded to max d_m with their last error (no further gain);
    padded support entries are −1.
    """
    n, steps = data.x.shape[0], max(b.shape[1] for b in data.bases)
    support = torch.full((n, steps), -1, dtype=torch.long)
    rel = torch.empty(n, steps + 1, dtype=torch.float64)
    offset = 0
    for m, basis in enumerate(data.bases):
        rows = data.subspace_id == m
        d = basis.shape[1]
        path = orthogonal_matching_pursuit(data.x[rows], basis.T, d)
        support[rows, :d] = path.support + offset
        rel[rows, :d + 1] = path.rel_error
        rel[rows, d + 1:] = path.rel_error[:, -1:]
        offset += d
    path = PursuitPath(support=support, rel_error=rel)
    return path.atoms_needed(tolerance), path


@torch.no_grad()
def explanation_length(model: SAE, x: torch.Tensor, max_atoms: int,
                       tolerance: float = TOLERANCE) -> tuple[torch.Tensor, PursuitPath]:
    """Atoms of ``model``'s decoder OMP needs per raw sample x: (N, d), in the model's normalised space
    centred on b_dec (the part of x the latents must explain): ((N,), path)."""
    x_c = model.normalize(x.to(model.W_dec.device).float()) - model.b_dec
    return oracle_budgets(x_c.cpu(), model.W_dec.detach().cpu(), max_atoms, tolerance)


def budget_tolerance(path: PursuitPath, budget: float) -> float:
    """The median relative error ``path`` reaches with ``round(budget)`` atoms (at least 1, at most the
    path's length): the tolerance at which the median sample needs about ``budget`` atoms.

    A fixed tolerance means different things on different data: on the manifold mixture 5% of ‖x‖² is
    reached by the one or two atoms that point at a manifold's centre, so every sample "needs" 1–2
    atoms and the count says nothing. Tying the tolerance to the matched budget makes the count
    informative on any data (notebooks 02, 03 and 04 use this rule)."""
    steps = path.rel_error.shape[1] - 1
    return float(path.rel_error[:, min(steps, max(1, round(budget)))].median())


def allocation_bound(path: PursuitPath, mean_budget: float, target: np.ndarray, clusters: np.ndarray,
                     n_boot: int = 1000, seed: int = 0) -> dict:
    """Spearman (cluster-bootstrap CI) of the optimal budgets at ``mean_budget`` with ``target`` (N,).

    Returns the :func:`summarize_association` row plus ``mean_budget`` and the budgets' mean.
    """
    budgets = optimal_allocation(path.rel_error, mean_budget).numpy()
    row = summarize_association(budgets, target, clusters=clusters, n_boot=n_boot, seed=seed)
    return {**row, "mean_budget": float(mean_budget), "allocated_mean": float(budgets.mean())}


def supervised_k_capacity(x_train: torch.Tensor, target_train: torch.Tensor, x_test: torch.Tensor, k: int,
                          dict_size: int, steps: int = 2000, batch_size: int = 512, lr: float = 1e-3,
                          seed: int = 0) -> torch.Tensor:
    """SoftSAE's k-estimator (same architecture and init as in a SoftSAE of this size) fitted by MSE to
    ``target_train`` (N,), with the SAE part untouched; returns its k̂ on ``x_test``: (N_test,).

    k_max = 2k as in training, so targets above 2k cannot be reached (the clamp is part of the model).
    """
    model = make_sae("soft", d_model=x_train.shape[1], dict_size=dict_size, k=k, seed=seed)
    gen = torch.Generator().manual_seed(seed)
    model.fit_normalization(x_train)
    model.init_b_dec(model.normalize(x_train[torch.randperm(len(x_train), generator=gen)[:batch_size]]))
    params = model.k_estimator_parameters()
    opt = torch.optim.Adam(params, lr=lr)
    target = target_train.float()
    for _ in range(steps):
        idx = torch.randint(0, len(x_train), (batch_size,), generator=gen)
        pred = model.predict_k_normalized(model.normalize(x_train[idx]))
        loss = (pred - target[idx]).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    with torch.no_grad():
        return model.predict_k(x_test)
