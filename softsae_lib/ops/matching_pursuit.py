"""Orthogonal matching pursuit (Pati, Rezaiifar & Krishnaprasad 1993), batched over samples.

Used as an oracle and as a measure of "explanation length": how many atoms of a dictionary a sample
needs to reach a fixed relative error (issue 12's positive control and direct test). Greedy: at
step t pick the atom most correlated with the residual, then refit all chosen atoms by least squares
(signed coefficients), so the residual is orthogonal to their span.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class PursuitPath:
    """The greedy path of every sample."""

    support: torch.Tensor
    """(N, T) long: the atom chosen at each step, in order."""
    rel_error: torch.Tensor
    """(N, T + 1) float64: ‖x − x̂_t‖² / ‖x‖² after t = 0..T atoms (1 at t = 0; 0 for x = 0)."""

    def atoms_needed(self, tolerance: float) -> torch.Tensor:
        """(N,) long: the smallest t with rel_error ≤ ``tolerance``; T + 1 where the path never gets there."""
        reached = self.rel_error <= tolerance
        first = reached.to(torch.int8).argmax(dim=1)
        return torch.where(reached.any(dim=1), first, torch.full_like(first, self.support.shape[1] + 1))


@torch.no_grad()
def orthogonal_matching_pursuit(x: torch.Tensor, dictionary: torch.Tensor, max_atoms: int,
                                chunk: int = 4096) -> PursuitPath:
    """OMP of every row of ``x`` over the rows of ``dictionary`` for ``max_atoms`` steps.

    Args:
        x: (N, D) signals.
        dictionary: (M, D) atoms (normalised internally; zero rows are never chosen).
        max_atoms: T, steps of the path (≤ M).
        chunk: rows processed at a time (memory).

    Returns:
        :class:`PursuitPath` with the chosen atoms and the relative error after each step.
    """
    if x.dim() != 2 or dictionary.dim() != 2 or x.shape[1] != dictionary.shape[1]:
        raise ValueError(f"need x: (N, D) and dictionary: (M, D), got {tuple(x.shape)}, "
                         f"{tuple(dictionary.shape)}")
    if not 1 <= max_atoms <= dictionary.shape[0]:
        raise ValueError(f"max_atoms must be in [1, M={dictionary.shape[0]}], got {max_atoms}")
    norms = dictionary.double().norm(dim=1, keepdim=True)
    atoms = torch.where(norms > 0, dictionary.double() / norms.clamp_min(1e-300), torch.zeros_like(norms))
    supports, errors = [], []
    for start in range(0, x.shape[0], chunk):
        s, e = _pursue(x[start:start + chunk].double(), atoms, max_atoms)
        supports.append(s)
        errors.append(e)
    return PursuitPath(support=torch.cat(supports), rel_error=torch.cat(errors))


def _pursue(x: torch.Tensor, atoms: torch.Tensor, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One chunk of :func:`orthogonal_matching_pursuit`: x (n, D) and unit atoms (M, D), float64."""
    n = x.shape[0]
    energy = x.pow(2).sum(dim=1)
    safe = energy.clamp_min(1e-300)
    residual = x.clone()
    chosen = torch.zeros(n, atoms.shape[0], dtype=torch.bool)
    support = torch.empty(n, steps, dtype=torch.long)
    rel = torch.empty(n, steps + 1, dtype=torch.float64)
    rel[:, 0] = torch.where(energy > 0, torch.ones_like(energy), torch.zeros_like(energy))
    for t in range(steps):
        score = (residual @ atoms.T).abs().masked_fill_(chosen, -1.0)
        pick = score.argmax(dim=1)
        chosen[torch.arange(n), pick] = True
        support[:, t] = pick
        A = atoms[support[:, :t + 1]]  # (n, t+1, D)
        gram = A @ A.transpose(1, 2)
        rhs = (A @ x.unsqueeze(2))  # (n, t+1, 1)
        # a tiny ridge keeps the solve defined when an atom repeats a direction already chosen
        eye = torch.eye(t + 1, dtype=torch.float64)
        coef = torch.linalg.solve(gram + 1e-10 * eye, rhs)
        residual = x - (coef.transpose(1, 2) @ A).squeeze(1)
        rel[:, t + 1] = residual.pow(2).sum(dim=1) / safe
    return support, rel


def optimal_allocation(rel_error: torch.Tensor, mean_budget: float) -> torch.Tensor:
    """Budgets k_i (mean ``mean_budget``) that minimise Σ_i rel_error[i, k_i] given greedy paths.

    The marginal gains g_ij = e_i(j−1) − e_i(j) of OMP paths are non-increasing in j up to small
    deviations; they are made so by a running minimum, after which taking the ⌊N · mean_budget⌉
    largest gains of all samples is the exact optimum (a greedy exchange argument), and each sample's
    budget is how many of its gains were taken. This is the best a per-sample budget can do at that
    mean on these paths: the bound a learned k̂ is judged against.

    Args:
        rel_error: (N, T + 1) error paths (:attr:`PursuitPath.rel_error`).
        mean_budget: the mean number of atoms per sample, in [0, T].

    Returns:
        (N,) long budgets.
    """
    n, steps = rel_error.shape[0], rel_error.shape[1] - 1
    if not 0 <= mean_budget <= steps:
        raise ValueError(f"mean_budget must be in [0, {steps}], got {mean_budget}")
    gains = (rel_error[:, :-1] - rel_error[:, 1:]).clamp_min(0)
    gains = torch.cummin(gains, dim=1).values
    total = int(round(n * mean_budget))
    if total == 0:
        return torch.zeros(n, dtype=torch.long)
    flat = gains.flatten()
    # stable tie-breaking: among equal gains, earlier steps first (keeps prefixes)
    order = torch.argsort(-flat, stable=True)[:total]
    taken = torch.zeros_like(flat, dtype=torch.bool)
    taken[order] = True
    return taken.view(n, steps).sum(dim=1)
