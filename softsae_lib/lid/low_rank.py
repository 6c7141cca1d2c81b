"""Exact K nearest neighbours for data near a low-dimensional linear subspace: filter, then refine.

Intrinsic-dimension estimation is run on data that are expected to concentrate near a set of low
dimension, and such data usually also have a fast-decaying PCA spectrum (a 9-sphere spanned by 10
directions of R⁷⁶⁸, language-model activations with their few dominant directions). Brute force
spends N²D/2 multiply-adds regardless. This module spends N²(r+1)/2 on a lower-bounding filter in
r+1 dimensions and keeps the result exact (the GEMINI filter-and-refine scheme of Faloutsos et al.,
SIGMOD 1994, with a PCA basis):

1. Rotate the centred data into an orthonormal basis Vᵣ (the top r PCA directions, orthonormalised in
   float64) and split every point into its first r coordinates y = Vᵣᵀx and its residual x − Vᵣy,
   of norm ρ (float64, chunked).
   For any two points ‖a − b‖² = ‖y_a − y_b‖² + ‖res_a − res_b‖² ≥ ‖y_a − y_b‖² + (ρ_a − ρ_b)²,
   i.e. the distance between the (r+1)-vectors z = (y, ρ) is a lower bound LB of the true distance.
2. Search the M + 1 nearest neighbours (M = K + ``extra``) of every point in z-space with the
   brute-force search of :mod:`softsae_lib.lid.neighbors` on z rounded to float32; rounding moves
   each z by at most 2⁻²⁴‖z‖ = 2⁻²⁴‖x − mean‖, which the bound below subtracts.
3. Refine: exact float64 distances to the M candidates in the original space; keep the K nearest.
4. Certify: every non-candidate j has d_j ≥ LB_j ≥ LB_(M+1) − rounding. A row whose K-th exact distance is
   ≤ LB_(M+1) (minus a rounding margin) therefore holds the true K nearest. Uncertified rows are
   redone by brute force against all points, so the result is exact for any data, and fast when
   the spectrum decays.

r is chosen from the spectrum: the smallest r whose expected squared residual distance between two
points, 2·Σ_{i>r} λᵢ / N, is at most ``tail_fraction`` of the median squared K-NN distance (measured
on a sample of 256 points, in float32); when r + 1 would exceed D/4 the filter saves too little and
:func:`choose_rank` returns ``None`` (brute force is used).
"""

from __future__ import annotations

import torch
from torch import Tensor

from softsae_lib.lid.exact import _exact_sq, _unit_roundoff  # the same exact refinement as brute force

_SAMPLE = 256  # points whose K-NN distance calibrates the rank
_BASIS_ROWS = 4096  # rows of the Gram that picks the directions (any orthonormal basis is valid)
_MIN_POINTS = 4096  # below this brute force is already cheap
_CHUNK = 4096  # rows per float64 projection chunk
_TABLE_ELEMS = 1 << 20  # elements of one block of the filter-space distance table (4 MiB: stays in cache)


def _centre(x: Tensor) -> Tensor:
    """The column mean of ``x`` (N, D) as float64 (D,), summed in float32: any centre keeps the filter a
    lower bound (distances do not depend on it); the mean only keeps the coordinates small, and a
    float32 sum costs a fourteenth of converting x to float64 first."""
    return x.float().mean(0).to(torch.float64)


def _pca(x: Tensor, perm: Tensor, mean: Tensor) -> tuple[Tensor, Tensor]:
    """Eigenvalues (D,) descending (scaled to all N rows) and eigenvectors (D, D) float32 of the
    covariance of ``x`` (N, D) about ``mean`` (D,), from at most 4096 rows ``perm[:4096]``.

    In float32: any orthonormal basis keeps the result exact (callers orthonormalise the columns they
    keep in float64), a good one keeps the filter tight, and the eigenvalues only pick the rank.
    """
    xs = x[perm[:_BASIS_ROWS]].float() - mean.float()
    lam, vec = torch.linalg.eigh(xs.T @ xs)
    return lam.flip(0).clamp_min(0) * (x.shape[0] / xs.shape[0]), vec.flip(1)


def _qr64(vec: Tensor) -> Tensor:
    """Orthonormal float64 columns spanning ``vec`` (D, r)."""
    return torch.linalg.qr(vec.to(torch.float64))[0]


def _perm(x: Tensor, seed: int) -> Tensor:
    gen = torch.Generator(device="cpu").manual_seed(seed)
    return torch.randperm(x.shape[0], generator=gen).to(x.device)


def low_rank_basis(x: Tensor, r: int, seed: int = 0) -> tuple[int, Tensor]:
    """The top-``r`` PCA directions of ``x`` (N, D) as ``(r, basis)``, basis (D, r) float64 orthonormal."""
    r = max(1, min(x.shape[1] - 1, r))
    return r, _qr64(_pca(x, _perm(x, seed), _centre(x))[1][:, :r])


def choose_rank(x: Tensor, k: int, tail_fraction: float = 0.05, seed: int = 0) -> tuple[int, Tensor] | None:
    """Filter rank r and basis (D, r) float64 with orthonormal columns for ``x`` (N, D), or ``None``
    when brute force is the better choice (rule in the module docstring).

    Cost: a float32 Gram of at most 4096 rows (enough for a basis of a few dozen directions), one
    D×D float32 eigendecomposition, and the K-NN distances of 256 sample points (float32; they only
    calibrate r).
    """
    n, d = x.shape
    if n < _MIN_POINTS or d < 16 or k + 3 >= n:
        return None
    perm = _perm(x, seed)
    mean = _centre(x)  # one pass over x, shared by both uses
    lam, vec = _pca(x, perm, mean)
    xc = x.float() - mean.float()
    # Squared distances of the sample to every point by the expanded form (one matmul; cdist's
    # direct path is several times slower here). Centred data keep its cancellation small, and dk2
    # only calibrates r.
    sq = xc.square().sum(1)
    d2 = torch.mm(xc[perm[:_SAMPLE]], xc.T).mul_(-2.0).add_(sq[perm[:_SAMPLE], None]).add_(sq).clamp_min_(0.0)
    d2[torch.arange(min(_SAMPLE, n), device=x.device), perm[:_SAMPLE]] = torch.inf
    dk2 = float(d2.topk(k, dim=1, largest=False).values[:, -1].median())
    tail = lam.flip(0).cumsum(0).flip(0)  # tail[r] = Σ_{i ≥ r} λᵢ (0-based: the dims left out at rank r)
    ok = (2 * tail / n <= tail_fraction * dk2).nonzero()
    if len(ok) == 0 or int(ok[0]) + 1 > d // 4:
        return None
    r = max(1, int(ok[0]))
    return r, _qr64(vec[:, :r])


def filter_space(x: Tensor, basis: Tensor) -> tuple[Tensor, Tensor]:
    """Lower-bounding coordinates of the rows of ``x`` (N, D) for an orthonormal ``basis`` (D, r).

    Returns:
        ``(z, scale)``: z (N, r+1) float64 = (basis coordinates, residual norm) with
        ‖z_a − z_b‖ ≤ ‖x_a − x_b‖ up to float64 rounding, and scale (N,) float64 = ‖x − mean‖ = ‖z‖.
    """
    mean = _centre(x)
    z = torch.empty(x.shape[0], basis.shape[1] + 1, dtype=torch.float64, device=x.device)
    scale = torch.empty(x.shape[0], dtype=torch.float64, device=x.device)
    for s in range(0, x.shape[0], _CHUNK):
        xc = x[s : s + _CHUNK].to(torch.float64) - mean
        y = xc @ basis
        z[s : s + _CHUNK, :-1] = y
        z[s : s + _CHUNK, -1] = torch.linalg.vector_norm(xc - y @ basis.T, dim=1)
        scale[s : s + _CHUNK] = torch.linalg.vector_norm(xc, dim=1)
    return z, scale


def _filter_candidates(zf: Tensor, m: int) -> tuple[Tensor, Tensor]:
    """The m nearest other rows of every row of ``zf`` (N, r+1) float32 by the expanded-form distance.

    Row blocks of the (N, N) table of ‖b‖² − 2a·b come from one matmul each on augmented vectors
    [a, 1]·[−2b, ‖b‖²] (no separate passes adding the norms) and are reduced at once by ``topk``: at
    r + 1 ≈ 10 dimensions the matmul is cheap and the passes over the table are the cost, so a
    row-wise top-k over the full table beats the symmetric half-table merges of brute force.

    Returns:
        ``(cand, v)``: cand (N, m) long sorted by v ascending, and v (N, m) float64 their d̃² =
        ‖a‖² + ‖b‖² − 2a·b; every other row b has d̃² ≥ v[:, -1].
    """
    n = zf.shape[0]
    norms = zf.square().sum(1)
    q = torch.cat([zf, torch.ones_like(norms)[:, None]], 1)
    r = torch.cat([-2 * zf, norms[:, None]], 1)
    cand = torch.empty(n, m, dtype=torch.long, device=zf.device)
    v = torch.empty(n, m, dtype=zf.dtype, device=zf.device)
    step = max(1, _TABLE_ELEMS // n)
    buf = torch.empty(step * n, dtype=zf.dtype, device=zf.device)  # reused: no page faults per block
    for s in range(0, n, step):
        e = min(n, s + step)
        t = torch.mm(q[s:e], r.T, out=buf[: (e - s) * n].view(e - s, n))
        t.diagonal(s).fill_(torch.inf)  # the point itself
        v[s:e], cand[s:e] = t.topk(m, dim=1, largest=False, sorted=True)
    return cand, v.to(torch.float64) + norms.to(torch.float64)[:, None]


def knn_low_rank(x: Tensor, k: int, basis: Tensor, extra: int, brute) -> tuple[Tensor, Tensor, int]:
    """Exact self K-NN of the rows of ``x`` (N, D) through the filter of ``basis`` (module docstring).

    Args:
        x: (N, D) float32/float64 points.
        k: neighbours K (the point itself excluded).
        basis: (D, r) float64 orthonormal columns (see :func:`choose_rank`).
        extra: candidates beyond K refined exactly.
        brute: ``brute(q, ref, k, exclude_self) -> (dist, idx)``, the exact brute-force search used
            for uncertified rows.
    Returns:
        ``(dist, idx, n_redone)``: dist (N, K) float64 ascending, idx (N, K) long, and the number of
        rows that failed certification and were searched by brute force.

    The filter's candidates are refined in two rounds: the K + 1 nearest in z-space first (for data
    near the subspace the bound is tight and they certify), then all M + 1 for the rows that did not.
    """
    n = x.shape[0]
    m = min(k + max(extra, 1), n - 2)
    z, scale = filter_space(x, basis)
    zf = z.float()
    cand, v = _filter_candidates(zf, m + 1)
    # d̃² of float32 z is off by at most E (the brute-force search's bound, at dimension r + 1);
    # float32 rounding of z moves each point by ≤ 2⁻²⁴‖z‖, with ‖z‖ = scale up to float64 rounding.
    zn = zf.double().square().sum(1).sqrt()
    err = (zf.shape[1] + 16) * _unit_roundoff(torch.float32) * 1.01 * (zn + zn.max()) ** 2
    shift = 2.0**-23 * (scale + scale.max()) * 1.01

    def certify(rows: Tensor, width: int) -> tuple[Tensor, Tensor, Tensor]:
        """Refine the first ``width`` candidates of ``rows``; the rows whose K nearest are certified."""
        c = cand[rows, :width]
        ex, order = _exact_sq(x, x, rows, c).sort(dim=1, stable=True)
        # every row outside the first width candidates has d̃² ≥ v[:, width] (or the last v)
        nxt = v[rows, min(width, m)]
        bound = (nxt - err[rows]).clamp_min(0).sqrt() - shift[rows]
        ok = (bound >= 0) & (bound.square() >= ex[:, k - 1])
        return ex[:, :k], c.gather(1, order[:, :k]), ok

    rows = torch.arange(n, device=x.device)
    dist, idx, ok = certify(rows, k + 1)
    bad = (~ok).nonzero().squeeze(1)
    if bad.numel():
        d2, i2, ok2 = certify(bad, m + 1 if m + 1 < n - 1 else m)
        dist[bad], idx[bad] = d2, i2
        bad = bad[~ok2]
    if bad.numel():
        d_bad, i_bad = brute(x[bad], x, k + 1, False)
        # drop the point itself (or, tied at distance 0, the last of its copies: the caller's
        # duplicate handling sees the zero either way)
        keep = i_bad != bad[:, None]
        sel = keep & (keep.cumsum(1) <= k)
        dist[bad] = d_bad[sel].view(-1, k).square()
        idx[bad] = i_bad[sel].view(-1, k)
    return dist.sqrt_(), idx, int(bad.numel())
