"""Per-point (local) and global intrinsic-dimension estimators on a precomputed K-NN graph.

All estimators take the output of :func:`softsae_lib.lid.knn` (``dist`` (N, K) sorted ascending,
without the point itself; ``idx`` (N, K) long), so one graph serves every estimator. Computations are
vectorised torch in float64 on the device of the inputs.

Conventions are those of scikit-dimension 0.5 (``skdim.id``), checked against it in
``tests/lid/test_lid.py``:

- :func:`mle` with ``normalization="k-1"`` (default) = ``skdim.id.MLE()`` (``unbiased=False``, no
  noise model) pointwise ``dimension_pw_`` with the same K neighbours; ``"k-2"`` = ``MLE(unbiased=True)``.
- :func:`lpca` with ``rule="fo"`` = ``skdim.id.lPCA()`` (default ``ver="FO"``, ``alphaFO=0.05``) and
  ``rule="ratio"`` = ``lPCA(ver="ratio", alphaRatio=threshold)``, both via ``fit_pw(X, precomputed_knn=idx)``,
  whose neighbourhoods are the K neighbours *without* the point (``include_self=False``).
- :func:`twonn_global` = ``skdim.id.TwoNN(discard_fraction, method)``.

:func:`lpca` defaults to the ratio rule at 0.9 (skdim's default is "FO"); :func:`twonn_local` has no
skdim counterpart. Accuracy at N = 5000 (tests): the median per-point MLE (K = 20) and global TwoNN
are within ±10% on spheres S^m (m ≤ 10), cubes [0, 1]^m (m ≤ 5) and the swiss roll; on cubes with
m ≥ 8 both are biased low by 9–15% because every K-neighbourhood crosses the boundary.
"""

from __future__ import annotations

import warnings
from typing import Literal

import torch
from torch import Tensor

_F64 = torch.float64
_GATHER_ELEMS = 1 << 22


def _dist(dist: Tensor, k: int | None, min_k: int) -> Tensor:
    dist = torch.as_tensor(dist)
    if dist.ndim != 2:
        raise ValueError(f"dist must be (N, K), got shape {tuple(dist.shape)}")
    k = dist.shape[1] if k is None else k
    if not min_k <= k <= dist.shape[1]:
        raise ValueError(f"k={k} must be in [{min_k}, {dist.shape[1]}] (columns of dist)")
    return dist[:, :k].to(_F64)


def mle(dist: Tensor, k: int | None = None, normalization: Literal["k-1", "k-2", "k"] = "k-1") -> Tensor:
    """Levina–Bickel maximum-likelihood local dimension of every point.

    m̂_K(x) = c / Σ_{j=1}^{K−1} ln(T_K(x) / T_j(x)), T_j the distance to the j-th neighbour
    (Levina & Bickel, "Maximum likelihood estimation of intrinsic dimension", NeurIPS 2004, eq. 8).

    ``normalization`` sets c: ``"k-1"`` (default, the paper's; = skdim ``MLE(unbiased=False)``),
    ``"k-2"`` (MacKay & Ghahramani's correction, unbiased for a Poisson process: the sum is Gamma(K−1, m),
    so E[(K−2)/sum] = m; = skdim ``MLE(unbiased=True)``), or ``"k"``.

    Args:
        dist: (N, ≥K) neighbour distances sorted ascending, without the point itself.
        k: number of neighbours K (default: all columns; K ≥ 2).
        normalization: the constant c.
    Returns:
        (N,) float64; equal T_1..T_K give inf.
    Raises:
        ValueError: a zero distance (a duplicate point; ln 0 would give 0 or NaN), naming the rows.
    """
    d = _dist(dist, k, 2)
    zero = (d <= 0).any(dim=1)
    if bool(zero.any()):
        rows = zero.nonzero().flatten()
        raise ValueError(
            f"mle: {rows.numel()} of {d.shape[0]} points have a zero neighbour distance (first: row "
            f"{int(rows[0])}), i.e. duplicate points. Zero distances break the ID estimators: build the "
            f"distances with knn(..., duplicates='exclude') or 'dedupe', or call deduplicate() first.")
    kk = d.shape[1]
    c = {"k-1": kk - 1, "k-2": kk - 2, "k": kk}[normalization]
    logs = d.log()
    s = (logs[:, -1:] - logs[:, :-1]).sum(1)
    return c / s


def twonn_local(
    dist: Tensor,
    idx: Tensor,
    k: int | None = None,
    *,
    include_self: bool = True,
    unbiased: bool = False,
    reference_dist: Tensor | None = None,
) -> Tensor:
    """Local TwoNN: the TwoNN maximum-likelihood estimate restricted to each point's neighbourhood.

    TwoNN (Facco et al., "Estimating the intrinsic dimension of datasets by a minimal neighborhood
    information", Sci. Rep. 7, 12140, 2017): for locally uniform data, μ = T₂/T₁ follows the Pareto law
    P(μ > t) = t^{−d}, so ln μ ~ Exponential(d) and the MLE over n ratios is d̂ = n / Σ ln μ
    (Denti et al. 2022 use (n − 1) / Σ ln μ, unbiased: ``unbiased=True``). Here μ_j is taken from the
    global graph for every point j of the neighbourhood of x, i.e. its K nearest neighbours plus x
    itself (``include_self``), n = K + 1 (or K).

    Args:
        dist: (N, ≥2) neighbour distances (sorted, without self) of the points to estimate at.
        idx: (N, ≥K) neighbour indices. In self mode they index the same points as ``dist``.
        k: neighbourhood size K (default: all columns of ``idx``).
        include_self: include the point's own ratio T₂(x)/T₁(x).
        unbiased: use n − 1 instead of n in the numerator.
        reference_dist: (Nr, ≥2) distances of the reference points when ``idx`` comes from
            ``knn(query, k, reference=...)``: their ratios are then read from it.
    Returns:
        (N,) float64.
    """
    d = _dist(dist, 2, 2)
    idx = torch.as_tensor(idx, device=d.device)
    k = idx.shape[1] if k is None else k
    if not 1 <= k <= idx.shape[1]:
        raise ValueError(f"k={k} must be in [1, {idx.shape[1]}] (columns of idx)")
    log_mu = (d[:, 1] / d[:, 0]).log()
    log_mu_ref = log_mu if reference_dist is None else _twonn_log_mu(reference_dist)
    s = log_mu_ref[idx[:, :k]].sum(1)
    n = k
    if include_self:
        s = s + log_mu
        n += 1
    return (n - int(unbiased)) / s


def _twonn_log_mu(dist: Tensor) -> Tensor:
    d = _dist(dist, 2, 2)
    return (d[:, 1] / d[:, 0]).log()


def lpca(
    x: Tensor,
    idx: Tensor,
    threshold: float = 0.9,
    *,
    rule: Literal["ratio", "fo"] = "ratio",
    alpha_fo: float = 0.05,
    include_self: bool = False,
    k: int | None = None,
    reference: Tensor | None = None,
) -> Tensor:
    """Local PCA dimension of every point's K-NN neighbourhood.

    The neighbourhood (its K neighbours, plus the point if ``include_self``) is centred and the
    eigenvalues λ₁ ≥ λ₂ ≥ … of its covariance are computed (float64, from the smaller of the Gram and
    covariance matrices). Rules:

    - ``"ratio"``: the smallest q with (λ₁ + … + λ_q) / Σλ ≥ ``threshold`` (= skdim
      ``lPCA(ver="ratio", alphaRatio=threshold)``);
    - ``"fo"`` (Fukunaga & Olsen 1971, skdim's default ``ver="FO"``): q = #{λ_i > ``alpha_fo``·λ₁}.

    Args:
        x: (N, D) points the graph was built on (or the queries, with ``reference``).
        idx: (N, ≥K) neighbour indices (into ``x``, or into ``reference``).
        threshold: explained-variance fraction for ``rule="ratio"``.
        rule: "ratio" or "fo".
        alpha_fo: eigenvalue fraction for ``rule="fo"``.
        include_self: add the point itself to its neighbourhood (skdim does not).
        k: neighbourhood size K (default: all columns of ``idx``).
        reference: (Nr, D) points ``idx`` indexes, if not ``x``.
    Returns:
        (N,) float64 holding integers in [1, min(K, D)].
    """
    x = torch.as_tensor(x)
    ref = x if reference is None else torch.as_tensor(reference)
    idx = torch.as_tensor(idx, device=x.device)
    k = idx.shape[1] if k is None else k
    n_pts = k + int(include_self)
    if n_pts < 2:
        raise ValueError("a neighbourhood needs at least 2 points")
    if rule not in ("ratio", "fo"):
        raise ValueError(f"rule must be 'ratio' or 'fo', got {rule!r}")
    n, dim = x.shape
    out = torch.empty(n, dtype=_F64, device=x.device)
    step = max(1, _GATHER_ELEMS // (n_pts * dim))
    for s in range(0, n, step):
        e = min(n, s + step)
        nb = ref[idx[s:e, :k]].to(_F64)
        if include_self:
            nb = torch.cat([x[s:e, None, :].to(_F64), nb], 1)
        nb = nb - nb.mean(1, keepdim=True)
        gram = nb @ nb.transpose(1, 2) if n_pts <= dim else nb.transpose(1, 2) @ nb
        ev = torch.linalg.eigvalsh(gram).flip(-1).clamp_min(0)  # descending, (b, min(n_pts, D))
        if rule == "fo":
            q = (ev > alpha_fo * ev[:, :1]).sum(1)
        else:
            frac = ev.cumsum(1) / ev.sum(1, keepdim=True)
            q = ((frac < threshold).sum(1) + 1).clamp_max(ev.shape[1])
        out[s:e] = q.to(_F64)
    return out


def twonn_global(
    dist: Tensor, discard_fraction: float = 0.1, method: Literal["linear", "mle"] = "linear"
) -> float:
    """Global TwoNN dimension (Facco et al. 2017), as ``skdim.id.TwoNN(discard_fraction, method=method)``.

    With μ_i = T₂(i)/T₁(i) (points with T₁ = 0 dropped with a warning, N the number left) sorted
    ascending, the n = int(N·(1 − discard_fraction)) smallest are kept and F_emp(μ_(i)) = i/N.

    - ``"linear"``: least-squares slope through the origin of y = −ln(1 − F_emp) against x = ln μ,
      d = Σxy / Σx² (Facco et al., eq. 4).
    - ``"mle"``: ln μ ~ Exponential(d) and keeping the n smallest is type-II censoring:
      d = (n − 1) / (Σ_{i≤n} ln μ_(i) + (N − n) ln μ_(n)).

    Args:
        dist: (N, ≥2) neighbour distances sorted ascending, without the point itself.
        discard_fraction: fraction of the largest ratios discarded.
        method: "linear" or "mle".
    Returns:
        The dimension estimate (float).
    """
    d = _dist(dist, 2, 2)
    mu = d[:, 1] / d[:, 0]
    bad = ~torch.isfinite(mu)
    if bool(bad.any()):
        msg = f"twonn_global: dropping {int(bad.sum())} points with T1 = 0 (duplicates)"
        warnings.warn(msg, stacklevel=2)
        mu = mu[~bad]
    n_all = mu.shape[0]
    n_keep = int(n_all * (1 - discard_fraction))
    if n_keep < 2:
        raise ValueError("fewer than 2 points left to estimate the dimension")
    x = mu.sort().values[:n_keep].log()
    if method == "mle":
        return float((n_keep - 1) / (x.sum() + (n_all - n_keep) * x[-1]))
    if method != "linear":
        raise ValueError(f"method must be 'linear' or 'mle', got {method!r}")
    if n_keep == n_all:
        raise ValueError("the linear fit needs discard_fraction > 0 (F_emp = 1 at the largest ratio)")
    f = torch.arange(1, n_keep + 1, dtype=_F64, device=x.device) / n_all
    y = -torch.log1p(-f)
    return float((x * y).sum() / (x * x).sum())
