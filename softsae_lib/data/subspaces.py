"""A union of linear subspaces: synthetic data whose sparsest code is known exactly.

Subspace m has dimension d_m and a random orthonormal basis B_m: (D, d_m). A sample of subspace m is
x = r · B_m u + noise · ε with u uniform on the unit sphere S^{d_m − 1} and a radius r ~ U(r_lo, r_hi)
drawn from the same law for every subspace, so ‖x‖ carries no information about d_m (unlike a
Gaussian in the subspace, whose norm concentrates as d grows). The noise-free point has an exact
code of d_m atoms in the dictionary of all basis vectors (signed coefficients; an SAE, whose codes are
non-negative, needs the atoms ±b, still d_m per sample), and no code with fewer atoms reaches zero
error, so d_m is the oracle budget (``docs/sae-variants.md``, the k̂-vs-LID tests; issue 12's
"second generator with an exact optimum").
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass
class SubspaceUnion:
    """Samples from M linear subspaces of R^D with their ground truth (all per-sample tensors aligned)."""

    x: torch.Tensor
    """(N, D) samples (with noise)."""
    x_clean: torch.Tensor
    """(N, D) noise-free samples r · B_m u."""
    dim: torch.Tensor
    """(N,) dimension d_m of each sample's subspace: its oracle number of atoms."""
    subspace_id: torch.Tensor
    """(N,) index m of each sample's subspace (the cluster of a bootstrap)."""
    coords: torch.Tensor
    """(N, max d) true coefficients r · u (zero-padded beyond d_m)."""
    bases: list[torch.Tensor]
    """Per subspace, (D, d_m) orthonormal columns."""

    def dictionary(self) -> torch.Tensor:
        """(Σ d_m, D) every basis vector as a row: the true dictionary (signed codes)."""
        return torch.cat([b.T for b in self.bases])

    def atom_subspace(self) -> torch.Tensor:
        """(Σ d_m,) index of the subspace each row of :meth:`dictionary` belongs to."""
        return torch.repeat_interleave(torch.arange(len(self.bases)),
                                       torch.tensor([b.shape[1] for b in self.bases]))


def subspace_union(n_samples: int, ambient_dim: int, dims: Sequence[int] = tuple(range(1, 17)),
                   noise: float = 0.01, radius_range: tuple[float, float] = (0.5, 1.5),
                   seed: int = 0) -> SubspaceUnion:
    """Draw ``n_samples`` points, split equally over ``len(dims)`` subspaces, in shuffled order.

    Args:
        n_samples: total samples N (the remainder of N / M goes to the first subspaces).
        ambient_dim: D; every subspace needs d_m ≤ D.
        dims: the subspace dimensions d_m (one subspace per entry; repeat a value for several).
        noise: standard deviation of isotropic Gaussian noise added in R^D.
        radius_range: (r_lo, r_hi) of the uniform radius law shared by all subspaces.
        seed: seeds the bases, the samples and the shuffle (deterministic).

    Raises:
        ValueError: a dimension is < 1 or > D, N < 1, noise < 0, or the radius range is not 0 ≤ r_lo < r_hi.
    """
    dims = [int(d) for d in dims]
    if n_samples < 1:
        raise ValueError(f"n_samples must be ≥ 1, got {n_samples}")
    if not dims or min(dims) < 1 or max(dims) > ambient_dim:
        raise ValueError(f"dims must be non-empty ints in [1, ambient_dim={ambient_dim}], got {tuple(dims)}")
    if not noise >= 0:
        raise ValueError(f"noise must be ≥ 0, got {noise}")
    r_lo, r_hi = map(float, radius_range)
    if not 0 <= r_lo < r_hi:
        raise ValueError(f"radius_range must satisfy 0 ≤ r_lo < r_hi, got {radius_range}")
    gen = torch.Generator().manual_seed(seed)
    bases = [torch.linalg.qr(torch.randn(ambient_dim, d, generator=gen, dtype=torch.float64)).Q.float()
             for d in dims]
    q, rem = divmod(n_samples, len(dims))
    counts = torch.tensor([q + (i < rem) for i in range(len(dims))])
    subspace_id = torch.repeat_interleave(torch.arange(len(dims)), counts)
    d_max = max(dims)
    coords = torch.zeros(n_samples, d_max)
    x_clean = torch.empty(n_samples, ambient_dim)
    start = 0
    for basis, d, n in zip(bases, dims, counts.tolist(), strict=True):
        u = torch.nn.functional.normalize(torch.randn(n, d, generator=gen), dim=1)
        r = r_lo + (r_hi - r_lo) * torch.rand(n, 1, generator=gen)
        coords[start:start + n, :d] = r * u
        x_clean[start:start + n] = (r * u) @ basis.T
        start += n
    x = x_clean + noise * torch.randn(n_samples, ambient_dim, generator=gen)
    perm = torch.randperm(n_samples, generator=gen)
    return SubspaceUnion(x=x[perm], x_clean=x_clean[perm], dim=torch.tensor(dims)[subspace_id][perm],
                         subspace_id=subspace_id[perm], coords=coords[perm], bases=bases)
