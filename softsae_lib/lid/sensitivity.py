"""How a local-intrinsic-dimension estimate depends on its neighbourhood size K and on the sample size N.

Issue 12: on the same language-model tokens, k̂ correlated +0.39 with the MLE estimate and −0.39 with
local TwoNN. Before reading either sign, each estimator's dependence on K and N has to be known, and
which of them recovers a *known* dimension (notebook 02 runs :func:`lid_recovery` on synthetic data).

* :func:`lid_sensitivity`: per-point LID of each estimator (MLE, local TwoNN, local PCA) over a grid
  of K and of nested random subsamples of N points (one exact K-NN graph per N, at the largest K).
* :func:`sensitivity_summary`: median and quartiles per (estimator, N, K), and how stable the points'
  ranking is against the same estimator at the largest N.
* :func:`estimator_agreement`: Spearman between estimators on the same points, per (N, K).
* :func:`lid_association`: Spearman of every (estimator, N, K) estimate with a per-point value (k̂,
  a covariate, or the truth).
* :func:`lid_recovery`: against a known per-point dimension: Spearman, median ratio and median
  relative error.

Every function takes and returns plain :class:`pandas.DataFrame` (long format: one row per point,
estimator, N and K), so notebooks can tabulate and plot them directly.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import combinations

import numpy as np
import pandas as pd
import torch
from scipy.stats import spearmanr
from torch import Tensor

from softsae_lib.lid.estimators import lpca, mle, twonn_local
from softsae_lib.lid.neighbors import Duplicates, knn

ESTIMATORS = ("mle", "twonn", "lpca")
"""Per-point estimators this module knows (names as in :func:`softsae_lib.lid.local_id`)."""

KEYS = ["estimator", "n", "k"]


def nested_subsamples(n_total: int, ns: Sequence[int], seed: int = 0) -> dict[int, np.ndarray]:
    """{N: sorted row indices}: the first N of one seeded permutation, so every smaller subsample lies
    inside every larger one (a point's estimate can be followed as N grows). N is capped at ``n_total``."""
    order = np.random.default_rng(seed).permutation(n_total)
    return {int(min(n, n_total)): np.sort(order[:min(n, n_total)]) for n in sorted(set(ns))}


def _estimate(name: str, x: Tensor, dist: Tensor, idx: Tensor, k: int, lpca_threshold: float) -> Tensor:
    if name == "mle":
        return mle(dist, k=k)
    if name == "twonn":
        return twonn_local(dist, idx, k=k)
    return lpca(x, idx, lpca_threshold, k=k)


def lid_sensitivity(x: Tensor | np.ndarray, ks: Sequence[int], ns: Sequence[int],
                    estimators: Sequence[str] = ESTIMATORS, *, seed: int = 0,
                    duplicates: Duplicates = "dedupe", lpca_threshold: float = 0.9) -> pd.DataFrame:
    """Per-point LID of each estimator at each neighbourhood size K and subsample size N.

    For each N of ``ns`` (capped at the number of rows) the first N rows of one seeded permutation are
    taken (nested subsamples, :func:`nested_subsamples`), one exact K-NN graph is built at the largest
    K below N, and each estimator is read at every K of ``ks`` from its first K columns. Computed in
    float64. Pairs with K ≥ N are skipped.

    Args:
        x: (N_total, D) points.
        ks: neighbourhood sizes K (MLE uses T_1..T_K; TwoNN and local PCA the K-neighbourhood).
        ns: subsample sizes N.
        estimators: any of :data:`ESTIMATORS`.
        seed: seed of the subsample permutation.
        duplicates: passed to :func:`softsae_lib.lid.knn` (identical points break every estimator).
        lpca_threshold: explained-variance fraction of local PCA's ratio rule.

    Returns:
        Long DataFrame, one row per (point, estimator, N, K): ``point`` (row of ``x``), ``estimator``,
        ``n``, ``k``, ``lid``.

    Raises:
        ValueError: an unknown estimator, or an empty ``ks``/``ns``.
    """
    unknown = set(estimators) - set(ESTIMATORS)
    if unknown:
        raise ValueError(f"unknown estimators {sorted(unknown)}; choose from {ESTIMATORS}")
    if not ks or not ns:
        raise ValueError("lid_sensitivity needs at least one K and one N")
    x = torch.as_tensor(np.asarray(x) if not isinstance(x, Tensor) else x).double()
    parts = []
    for n, rows in nested_subsamples(x.shape[0], ns, seed).items():
        usable = sorted(k for k in set(ks) if k < n)
        if not usable:
            continue
        xs = x[torch.from_numpy(rows)]
        dist, idx = knn(xs, max(usable), duplicates=duplicates)
        for name in estimators:
            for k in usable:
                lid = _estimate(name, xs, dist, idx, k, lpca_threshold).numpy()
                parts.append(pd.DataFrame({"point": rows, "estimator": name, "n": n, "k": k, "lid": lid}))
    return pd.concat(parts, ignore_index=True)


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    ok = np.isfinite(a) & np.isfinite(b)
    if ok.sum() < 3 or np.ptp(a[ok]) == 0 or np.ptp(b[ok]) == 0:
        return float("nan")
    return float(spearmanr(a[ok], b[ok]).statistic)


def sensitivity_summary(frame: pd.DataFrame) -> pd.DataFrame:
    """Per (estimator, N, K) of a :func:`lid_sensitivity` frame: ``points``, ``median``, ``q25``,
    ``q75``, ``mean`` of the per-point LID, and ``rank_vs_largest_n``: Spearman of the points' estimates
    with those of the same estimator and K at the largest N (on the common points; 1 at the largest N).
    """
    rows = []
    for (est, n, k), part in frame.groupby(KEYS, sort=True):
        lid = part["lid"].to_numpy()
        fin = lid[np.isfinite(lid)]
        n_max = frame.loc[(frame["estimator"] == est) & (frame["k"] == k), "n"].max()
        ref = frame[(frame["estimator"] == est) & (frame["k"] == k) & (frame["n"] == n_max)]
        joined = part.merge(ref[["point", "lid"]], on="point", suffixes=("", "_ref"))
        rows.append({"estimator": est, "n": n, "k": k, "points": len(part),
                     "median": float(np.median(fin)) if fin.size else np.nan,
                     "q25": float(np.quantile(fin, 0.25)) if fin.size else np.nan,
                     "q75": float(np.quantile(fin, 0.75)) if fin.size else np.nan,
                     "mean": float(fin.mean()) if fin.size else np.nan,
                     "rank_vs_largest_n": _spearman(joined["lid"].to_numpy(), joined["lid_ref"].to_numpy())})
    return pd.DataFrame(rows)


def estimator_agreement(frame: pd.DataFrame) -> pd.DataFrame:
    """Spearman between every pair of estimators on the same points, per (N, K) of a
    :func:`lid_sensitivity` frame: columns ``n``, ``k``, ``pair`` ('mle~twonn', …), ``spearman``."""
    wide = frame.pivot_table(index=["n", "k", "point"], columns="estimator", values="lid")
    rows = []
    for (n, k), part in wide.groupby(level=["n", "k"], sort=True):
        for a, b in combinations(list(part.columns), 2):
            rows.append({"n": n, "k": k, "pair": f"{a}~{b}",
                         "spearman": _spearman(part[a].to_numpy(), part[b].to_numpy())})
    return pd.DataFrame(rows)


def lid_association(frame: pd.DataFrame, values: np.ndarray, name: str = "value") -> pd.DataFrame:
    """Spearman of each (estimator, N, K) estimate with ``values`` (indexed like the rows of the ``x``
    given to :func:`lid_sensitivity`, e.g. k̂ per token): columns ``estimator, n, k, target, points,
    spearman``."""
    values = np.asarray(values, dtype=float)
    rows = []
    for (est, n, k), part in frame.groupby(KEYS, sort=True):
        rows.append({"estimator": est, "n": n, "k": k, "target": name, "points": len(part),
                     "spearman": _spearman(part["lid"].to_numpy(), values[part["point"].to_numpy()])})
    return pd.DataFrame(rows)


def lid_recovery(frame: pd.DataFrame, truth: np.ndarray) -> pd.DataFrame:
    """How well each (estimator, N, K) recovers a known per-point dimension ``truth`` (indexed like the
    rows of ``x``): ``spearman`` with it, ``median_ratio`` (median of LID/truth; 1 is unbiased) and
    ``median_rel_error`` (median of |LID − truth|/truth)."""
    truth = np.asarray(truth, dtype=float)
    rows = []
    for (est, n, k), part in frame.groupby(KEYS, sort=True):
        lid, t = part["lid"].to_numpy(), truth[part["point"].to_numpy()]
        ok = np.isfinite(lid) & (t > 0)
        ratio = lid[ok] / t[ok]
        rows.append({"estimator": est, "n": n, "k": k, "points": len(part),
                     "spearman": _spearman(lid, t),
                     "median_ratio": float(np.median(ratio)) if ratio.size else np.nan,
                     "median_rel_error": float(np.median(np.abs(ratio - 1))) if ratio.size else np.nan})
    return pd.DataFrame(rows)


def per_point(frame: pd.DataFrame, n: int | None = None) -> pd.DataFrame:
    """One row per point at sample size ``n`` (default: the largest), one column ``<estimator>_k<K>``
    per estimate: the wide table to join with per-sample frames (index: ``point``)."""
    n = int(frame["n"].max()) if n is None else n
    part = frame[frame["n"] == n]
    wide = part.pivot_table(index="point", columns=["estimator", "k"], values="lid")
    wide.columns = [f"{e}_k{k}" for e, k in wide.columns]
    return wide
