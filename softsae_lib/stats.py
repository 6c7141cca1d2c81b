"""Statistics for "does the per-sample budget κ (SoftSAE k̂, L0, …) follow the local intrinsic dimension ℓ?"

Pure functions (docs/sae-variants.md §11): 1-D numpy arrays / torch tensors / sequences of length ``n`` in,
Python floats or dicts of floats out. Inputs are converted to float64 and checked: mismatched lengths, NaN/inf
and constant ``x``/``y`` (correlation undefined) raise ``ValueError`` naming the offending argument.

* :func:`correlations` — Pearson r, Spearman ρ (Pearson on average ranks), Kendall τ_b, with p-values (scipy).
* :func:`partial_correlation` — r_{xy·C} from OLS residuals (intercept + covariates), t-test, Fisher-z CI.
* :func:`cluster_bootstrap_ci` — percentile CI resampling whole clusters (documents / images / manifolds).
* :func:`permutation_pvalue` — two-sided permutation test: iid, within strata, or whole-cluster blocks.
* :func:`holm` — Holm–Bonferroni adjusted p-values.
* :func:`summarize_association` — the row the notebooks tabulate for one (model, layer).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence

import numpy as np
import torch
from scipy import stats as _st

ArrayLike = np.ndarray | torch.Tensor | Sequence[float]
Statistic = str | Callable[[np.ndarray, np.ndarray], float]
_CHUNK_ELEMS = 500_000  # bootstrap replicates are processed in (rows × n) chunks of about this many elements
_MIN_CLUSTERS_WARN = 10


# ----------------------------------------------------------------------------- input checking


def _to_numpy(a) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        a = a.detach().cpu()
        return (a.to(torch.float64) if a.is_floating_point() else a).numpy()
    return np.asarray(a)


def _vector(a, name: str, n: int | None = None, ref: str = "x") -> np.ndarray:
    arr = _to_numpy(a)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D of shape (n,), got shape {arr.shape}")
    if n is not None and arr.shape[0] != n:
        raise ValueError(f"{name} has length {arr.shape[0]} but {ref} has length {n}")
    try:
        arr = arr.astype(np.float64)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{name} must be numeric, got dtype {arr.dtype}") from e
    bad = int((~np.isfinite(arr)).sum())
    if bad:
        raise ValueError(f"{name} contains {bad} NaN/inf value(s) out of {arr.shape[0]}")
    return arr


def _pair(x, y, names: tuple[str, str] = ("x", "y"), min_n: int = 3) -> tuple[np.ndarray, np.ndarray]:
    xv = _vector(x, names[0])
    yv = _vector(y, names[1], xv.shape[0], names[0])
    if xv.shape[0] < min_n:
        raise ValueError(f"need at least {min_n} samples, got n = {xv.shape[0]}")
    for v, nm in ((xv, names[0]), (yv, names[1])):
        if np.ptp(v) == 0:
            raise ValueError(f"{nm} is constant (all {v.shape[0]} values = {v[0]:g}): correlation undefined")
    return xv, yv


def _labels(a, name: str, n: int) -> tuple[np.ndarray, int]:
    """Integer codes 0..G−1 (in sorted label order) and G, for cluster / stratum labels of length n."""
    arr = _to_numpy(a)
    if arr.ndim != 1 or arr.shape[0] != n:
        raise ValueError(f"{name} must have shape ({n},) like x, got shape {arr.shape}")
    if arr.dtype.kind == "f" and not np.isfinite(arr).all():
        raise ValueError(f"{name} contains {int((~np.isfinite(arr)).sum())} NaN/inf label(s)")
    uniq, codes = np.unique(arr, return_inverse=True)
    return codes.reshape(-1), len(uniq)


def _covariates(c, n: int) -> np.ndarray:
    if c is None:
        return np.zeros((n, 0))
    arr = _to_numpy(c)
    arr = arr[:, None] if arr.ndim == 1 else arr
    if arr.ndim != 2 or arr.shape[0] != n:
        raise ValueError(f"covariates must have shape ({n},) or ({n}, c) like x, got shape {arr.shape}")
    arr = arr.astype(np.float64)
    bad = int((~np.isfinite(arr)).sum())
    if bad:
        raise ValueError(f"covariates contains {bad} NaN/inf value(s) out of {arr.size}")
    return arr


def _resolve(statistic: Statistic) -> tuple[str | None, Callable[[np.ndarray, np.ndarray], float]]:
    fns = {"pearson": _st.pearsonr, "spearman": _st.spearmanr, "kendall": _st.kendalltau}
    if isinstance(statistic, str):
        if statistic not in fns:
            raise ValueError(f"statistic must be one of {sorted(fns)} or a callable, got {statistic!r}")
        f = fns[statistic]
        return statistic, lambda a, b: float(f(a, b).statistic)
    if callable(statistic):
        return None, lambda a, b: float(statistic(a, b))
    raise ValueError(f"statistic must be a string or a callable(x, y) -> float, got {type(statistic)}")


def _check_count(v: int, name: str) -> None:
    if int(v) != v or v < 1:
        raise ValueError(f"{name} must be a positive integer, got {v!r}")


# ----------------------------------------------------------------------------- correlations


def correlations(x: ArrayLike, y: ArrayLike) -> dict[str, float]:
    """Pearson, Spearman and Kendall τ_b correlation of ``x`` and ``y`` (both ``(n,)``), with p-values.

    Pearson r = cov(x, y)/(σ_x σ_y); Spearman ρ = Pearson r of the average ranks (ties, common for
    integer L0, get the mean of the ranks they span); Kendall τ_b = (n_c − n_d)/√((n₀−n₁)(n₀−n₂)), the
    tie-corrected τ. Values and two-sided p-values are scipy.stats' ``pearsonr``/``spearmanr``/``kendalltau``.

    Returns: ``{"n", "pearson", "pearson_p", "spearman", "spearman_p", "kendall", "kendall_p"}``.
    """
    xv, yv = _pair(x, y)
    out: dict[str, float] = {"n": int(xv.shape[0])}
    for name, f in (("pearson", _st.pearsonr), ("spearman", _st.spearmanr), ("kendall", _st.kendalltau)):
        res = f(xv, yv)
        out[name], out[f"{name}_p"] = float(res.statistic), float(res.pvalue)
    return out


def partial_correlation(x: ArrayLike, y: ArrayLike, covariates: ArrayLike | None = None,
                        method: str = "pearson", level: float = 0.95) -> dict[str, float]:
    """Partial correlation r_{xy·C} of ``x``, ``y`` (``(n,)``) given ``covariates`` C (``(n,)``/``(n, c)``).

    Both variables are residualised by OLS with an intercept on C (least squares via ``lstsq``, so constant
    or collinear columns are harmless), and r is the Pearson correlation of the two residual vectors; i.e.
    −P_xy/√(P_xx P_yy) with P the precision matrix of [x, y, C]. ``method="spearman"`` first replaces x, y
    and every column of C by their average ranks. ``c`` below is the number of linearly independent
    non-constant covariate columns (``n_covariates`` in the output), not the number of columns given.

    * t = r √(df/(1 − r²)), df = n − 2 − c; two-sided p from Student t with df degrees of freedom.
    * Fisher-z CI: tanh(atanh(r) ∓ z_{(1+level)/2}/√(n − 3 − c)).

    With no covariates this is the ordinary Pearson (or Spearman) correlation with scipy's t-test p-value.

    Returns: ``{"r", "t", "p", "df", "ci_low", "ci_high", "n", "n_covariates"}``.

    Raises: ``ValueError`` for constant x or y, x or y exactly linear in C, n ≤ 3 + c, NaNs, bad shapes.
    """
    xv, yv = _pair(x, y)
    n = xv.shape[0]
    C = _covariates(covariates, n)
    if method == "spearman":
        xv, yv = _st.rankdata(xv), _st.rankdata(yv)
        C = _st.rankdata(C, axis=0) if C.shape[1] else C
    elif method != "pearson":
        raise ValueError(f"method must be 'pearson' or 'spearman', got {method!r}")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    C = C[:, np.ptp(C, axis=0) > 0]  # constant columns are absorbed by the intercept
    C = (C - C.mean(0)) / C.std(0)  # centred (⊥ intercept) and scaled, so the rank test below is reliable
    c = int(np.linalg.matrix_rank(C)) if C.shape[1] else 0
    df = n - 2 - c
    if n - 3 - c < 1:
        raise ValueError(f"need n > 3 + c for the t-test and Fisher-z CI, got n = {n}, c = {c}")

    def resid(v: np.ndarray, name: str) -> np.ndarray:
        v = v - v.mean()
        e = v - C @ np.linalg.lstsq(C, v, rcond=None)[0] if C.shape[1] else v
        if e @ e <= 1e-20 * (v @ v):
            raise ValueError(f"{name} is a linear function of the covariates: partial correlation undefined")
        return e

    ex, ey = resid(xv, "x"), resid(yv, "y")
    r = float(np.clip(ex @ ey / np.sqrt((ex @ ex) * (ey @ ey)), -1.0, 1.0))
    with np.errstate(divide="ignore"):
        t = float(np.sign(r) * np.inf) if abs(r) == 1 else r * np.sqrt(df / (1 - r * r))
        z, half = np.arctanh(r), _st.norm.ppf((1 + level) / 2) / np.sqrt(n - 3 - c)
    p = float(2 * _st.t.sf(abs(t), df))
    return {"r": r, "t": t, "p": p, "df": df, "ci_low": float(np.tanh(z - half)),
            "ci_high": float(np.tanh(z + half)), "n": n, "n_covariates": c}


def holm(pvalues: ArrayLike) -> np.ndarray:
    """Holm–Bonferroni adjusted p-values, same shape as ``pvalues`` (m tests in any shape).

    With p_(1) ≤ … ≤ p_(m) sorted: p̃_(i) = min(1, max_{j ≤ i} (m − j + 1) p_(j)); returned in input order.
    Reject at family-wise level α where p̃ ≤ α.
    """
    p = _to_numpy(pvalues).astype(np.float64)
    flat = p.reshape(-1)
    if np.isnan(flat).any() or (flat < 0).any() or (flat > 1).any():
        raise ValueError(f"pvalues must lie in [0, 1] without NaN, got {flat.tolist()}")
    m = flat.size
    order = np.argsort(flat, kind="stable")
    adj = np.minimum(np.maximum.accumulate((m - np.arange(m)) * flat[order]), 1.0)
    out = np.empty_like(flat)
    out[order] = adj
    return out.reshape(p.shape)


# ----------------------------------------------------------------------------- cluster bootstrap


def _tie_groups(v: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    order = np.argsort(v, kind="stable")
    new = np.r_[True, v[order][1:] != v[order][:-1]]
    return order, np.flatnonzero(new), np.cumsum(new) - 1


def _weighted_values(v: np.ndarray, W: np.ndarray, groups, ranks: bool) -> tuple[np.ndarray, np.ndarray]:
    """Per-replicate values (raw or average ranks among the resampled points) and #distinct values present.

    W: ``(b, n)`` integer multiplicities. A tie group with total weight w after weight c of smaller values
    occupies ranks c+1 … c+w, so its average rank is c + (w + 1)/2: scipy's rank of the expanded sample.
    """
    order, starts, gid = groups
    gw = np.add.reduceat(W[:, order], starts, axis=1)
    if not ranks:
        return np.broadcast_to(v, W.shape), (gw > 0).sum(1)
    vals = np.empty_like(W)
    vals[:, order] = (np.cumsum(gw, axis=1) - gw + (gw + 1) / 2)[:, gid]
    return vals, (gw > 0).sum(1)


def _weighted_boot(xv, yv, codes, G: int, draws: np.ndarray, ranks: bool) -> np.ndarray:
    """Pearson/Spearman of each cluster-bootstrap replicate as a frequency-weighted statistic (no copies)."""
    n, B = xv.shape[0], draws.shape[0]
    gx, gy = _tie_groups(xv), _tie_groups(yv)
    out = np.empty(B)
    step = max(1, _CHUNK_ELEMS // n)
    for s in range(0, B, step):
        d = draws[s:s + step]
        b = d.shape[0]
        counts = np.bincount((d + G * np.arange(b)[:, None]).ravel(), minlength=b * G).reshape(b, G)
        W = counts[:, codes].astype(np.float64)
        (vx, kx), (vy, ky) = _weighted_values(xv, W, gx, ranks), _weighted_values(yv, W, gy, ranks)
        sw = W.sum(1, keepdims=True)
        dx = vx - (W * vx).sum(1, keepdims=True) / sw
        dy = vy - (W * vy).sum(1, keepdims=True) / sw
        with np.errstate(invalid="ignore", divide="ignore"):
            r = (W * dx * dy).sum(1) / np.sqrt((W * dx * dx).sum(1) * (W * dy * dy).sum(1))
        out[s:s + b] = np.where((kx > 1) & (ky > 1), np.clip(r, -1, 1), np.nan)
    return out


def cluster_bootstrap_ci(x: ArrayLike, y: ArrayLike, clusters: ArrayLike, statistic: Statistic = "spearman",
                         n_boot: int = 1000, level: float = 0.95, seed: int = 0) -> dict[str, float]:
    """Percentile CI of ``statistic(x, y)`` from a cluster (block) bootstrap over ``clusters``.

    Each replicate draws G of the G clusters (documents, images, manifolds; ``clusters`` is ``(n,)`` labels of
    any type) with replacement and keeps all points of every drawn cluster, so within-cluster dependence is
    preserved. ``statistic`` is ``"pearson"``/``"spearman"`` (vectorised: replicates are frequency-weighted
    copies of the data, identical to recomputing on the expanded sample), ``"kendall"`` or a callable
    ``f(x, y) -> float``. Replicates where the statistic is undefined (e.g. x constant) are dropped, with a
    warning. Deterministic given ``seed``. ``clusters = arange(n)`` gives the ordinary iid bootstrap.

    Returns: ``{"estimate", "ci_low", "ci_high", "se", "n_clusters", "n_boot", "n_valid", "level"}``;
    ``se`` is the standard deviation of the replicates.

    Raises: ``ValueError`` with fewer than 2 clusters; warns with fewer than 10 (percentile CI unreliable).
    """
    xv, yv = _pair(x, y)
    codes, G = _labels(clusters, "clusters", xv.shape[0])
    _check_count(n_boot, "n_boot")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    if G < 2:
        raise ValueError(f"clusters has {G} distinct label(s): a cluster bootstrap needs at least 2")
    if G < _MIN_CLUSTERS_WARN:
        warnings.warn(f"only {G} clusters: cluster-bootstrap percentile CIs are unreliable", RuntimeWarning,
                      stacklevel=2)
    name, fn = _resolve(statistic)
    draws = np.random.default_rng(seed).integers(0, G, size=(n_boot, G))
    if name in ("pearson", "spearman"):
        boot = _weighted_boot(xv, yv, codes, G, draws, ranks=name == "spearman")
    else:
        order = np.argsort(codes, kind="stable")
        members = np.split(order, np.cumsum(np.bincount(codes, minlength=G))[:-1])
        boot = np.empty(n_boot)
        for i, d in enumerate(draws):
            idx = np.concatenate([members[g] for g in d])
            boot[i] = fn(xv[idx], yv[idx])
    ok = np.isfinite(boot)
    if ok.sum() < 2:
        raise ValueError(f"only {int(ok.sum())} of {n_boot} bootstrap replicates gave a finite statistic")
    if not ok.all():
        warnings.warn(f"{int((~ok).sum())} of {n_boot} bootstrap replicates were undefined and dropped",
                      RuntimeWarning, stacklevel=2)
    lo, hi = np.quantile(boot[ok], [(1 - level) / 2, (1 + level) / 2])
    return {"estimate": fn(xv, yv), "ci_low": float(lo), "ci_high": float(hi),
            "se": float(boot[ok].std(ddof=1)), "n_clusters": G, "n_boot": int(n_boot),
            "n_valid": int(ok.sum()), "level": level}


# ----------------------------------------------------------------------------- permutation test


def _cluster_sampler(codes: np.ndarray, G: int, rng: np.random.Generator) -> Callable[[], np.ndarray]:
    n = codes.shape[0]
    order = np.argsort(codes, kind="stable")  # members of each cluster, in their original order
    sizes = np.bincount(codes, minlength=G)
    members = np.split(order, np.cumsum(sizes)[:-1])
    blocks = [np.stack([members[g] for g in np.flatnonzero(sizes == s)]) for s in np.unique(sizes)]
    blocks = [M for M in blocks if M.shape[0] > 1]
    movable = sum(M.shape[0] for M in blocks)
    if movable == 0:
        raise ValueError("clusters all have different sizes: no cluster-block permutation exists; "
                         "truncate clusters to a common length or use strata")
    if movable < G:
        warnings.warn(f"{G - movable} of {G} clusters have a size shared by no other cluster and are never "
                      "permuted (blocks are only exchanged between clusters of equal size)", RuntimeWarning,
                      stacklevel=3)

    def sample() -> np.ndarray:
        perm = np.arange(n)
        for M in blocks:
            perm[M.ravel()] = M[rng.permutation(M.shape[0])].ravel()
        return perm
    return sample


def permutation_pvalue(x: ArrayLike, y: ArrayLike, statistic: Statistic = "spearman", n_perm: int = 1000,
                       seed: int = 0, clusters: ArrayLike | None = None,
                       strata: ArrayLike | None = None) -> dict[str, float]:
    """Two-sided permutation p-value of ``statistic(x, y)`` (``x``, ``y``: ``(n,)``), permuting ``y``.

    p = (1 + #{b : |T_b| ≥ |T_obs|})/(1 + n_perm) (the +1 makes it a valid p-value; ties count, up to 1e-12
    relative rounding). ``statistic`` as in :func:`cluster_bootstrap_ci`; it should be centred at 0 under the
    null (correlations are). The null hypothesis depends on the scheme (reported as ``"scheme"``):

    * ``"iid"`` (default): the n values of y are exchangeable — only valid for independent samples.
    * ``strata`` (``(n,)`` labels, e.g. position bins): y is permuted only within each stratum; null = x ⟂ y
      given the stratum, which removes associations carried by the stratum variable.
    * ``clusters`` (``(n,)`` labels, e.g. document id): whole y-blocks are exchanged between clusters. Cluster
      A's points (in their original order, e.g. token position) receive cluster B's y values in B's order,
      with B drawn by a uniformly random permutation among clusters of the SAME size (sizes must match for
      the mapping to exist; clusters with a unique size stay in place, with a warning; none movable → error).
      Null = the pairing of clusters' x-blocks with y-blocks is exchangeable (e.g. shuffling ℓ across
      documents); within-cluster dependence of x and of y is kept intact, so the test is valid under
      clustering where the iid test is anti-conservative. Permuting y *within* clusters would instead test
      within-cluster association, which is a different null, and is what ``strata=clusters`` does.

    ``clusters`` and ``strata`` cannot be combined. Returns: ``{"estimate", "p", "n_perm", "scheme"}``.
    """
    xv, yv = _pair(x, y)
    n = xv.shape[0]
    _check_count(n_perm, "n_perm")
    rng = np.random.default_rng(seed)
    if clusters is not None and strata is not None:
        raise ValueError("pass either clusters or strata, not both")
    if clusters is not None:
        scheme, sample = "clusters", _cluster_sampler(*_labels(clusters, "clusters", n), rng)
    elif strata is not None:
        codes, _ = _labels(strata, "strata", n)
        if np.bincount(codes).max() < 2:
            raise ValueError("every stratum in strata has a single member: nothing to permute")
        base = np.argsort(codes, kind="stable")

        def sample() -> np.ndarray:  # random order within each stratum, laid onto that stratum's positions
            perm = np.empty(n, dtype=np.int64)
            perm[base] = np.argsort(codes + rng.random(n))  # keys distinct a.s.
            return perm
        scheme = "strata"
    else:
        scheme = "iid"

        def sample() -> np.ndarray:
            return rng.permutation(n)
    name, fn = _resolve(statistic)
    if name in ("pearson", "spearman"):  # ranks of a permuted y are the permuted ranks: transform once
        a, b = (_st.rankdata(xv), _st.rankdata(yv)) if name == "spearman" else (xv, yv)
        a, b = a - a.mean(), b - b.mean()
        a, b = a / np.linalg.norm(a), b / np.linalg.norm(b)

        def stat(perm: np.ndarray) -> float:
            return float(a @ b[perm])
    else:
        def stat(perm: np.ndarray) -> float:
            return fn(xv, yv[perm])
    t_obs = stat(np.arange(n))
    tol = 1e-12 * max(1.0, abs(t_obs))
    hits = sum(abs(stat(sample())) >= abs(t_obs) - tol for _ in range(int(n_perm)))
    return {"estimate": t_obs, "p": (1 + hits) / (1 + int(n_perm)), "n_perm": int(n_perm), "scheme": scheme}


# ----------------------------------------------------------------------------- one-call summary


def summarize_association(kappa: ArrayLike, lid: ArrayLike, covariates: ArrayLike | None = None,
                          clusters: ArrayLike | None = None, n_boot: int = 1000, seed: int = 0,
                          level: float = 0.95,
                          kappa_bounds: tuple[float, float] | None = None) -> dict[str, float]:
    """Everything tabulated per (model, layer) for κ (``(n,)``: k̂, L0, …) against ℓ (``(n,)``: LID).

    Keys (always all present, NaN where not requested, so rows stack into a DataFrame):

    * ``n``, ``kappa_min``, ``kappa_max``, ``share_at_min``, ``share_at_max``: fraction of κ at the lower /
      upper clamp bound (saturation attenuates ρ). Bounds are ``kappa_bounds`` (e.g. ``(1, k_max)``; values
      within 1e-6·max(1, |bound|) of or beyond a bound count) or, by default, the observed min and max.
    * ``pearson``, ``spearman``, ``kendall`` and their ``*_p`` (:func:`correlations`).
    * with ``covariates`` (``(n, c)``): ``partial_spearman``, ``partial_spearman_p``,
      ``partial_spearman_ci_low``/``_high`` (Fisher z), ``partial_df``, ``n_covariates``.
    * with ``clusters`` (``(n,)``): ``spearman_ci_low``/``_high``, ``spearman_se`` (cluster bootstrap,
      ``n_boot`` replicates, ``seed``), ``n_clusters``.
    """
    k, ell = _pair(kappa, lid, names=("kappa", "lid"))
    lo, hi = (float(k.min()), float(k.max())) if kappa_bounds is None else map(float, kappa_bounds)
    out: dict[str, float] = {
        "n": int(k.shape[0]), "kappa_min": float(k.min()), "kappa_max": float(k.max()),
        "share_at_min": float(np.mean(k <= lo + 1e-6 * max(1.0, abs(lo)))),
        "share_at_max": float(np.mean(k >= hi - 1e-6 * max(1.0, abs(hi)))),
    }
    out.update({key: v for key, v in correlations(k, ell).items() if key != "n"})
    nan = float("nan")
    keys = ("partial_spearman", "partial_spearman_p", "partial_spearman_ci_low", "partial_spearman_ci_high",
            "partial_df", "n_covariates", "spearman_ci_low", "spearman_ci_high", "spearman_se", "n_clusters")
    out.update(dict.fromkeys(keys, nan))
    if covariates is not None:
        pc = partial_correlation(k, ell, covariates, method="spearman", level=level)
        out.update({"partial_spearman": pc["r"], "partial_spearman_p": pc["p"], "partial_df": pc["df"],
                    "partial_spearman_ci_low": pc["ci_low"], "partial_spearman_ci_high": pc["ci_high"],
                    "n_covariates": pc["n_covariates"]})
    if clusters is not None:
        bs = cluster_bootstrap_ci(k, ell, clusters, "spearman", n_boot=n_boot, level=level, seed=seed)
        out.update({"spearman_ci_low": bs["ci_low"], "spearman_ci_high": bs["ci_high"],
                    "spearman_se": bs["se"], "n_clusters": bs["n_clusters"]})
    return out
