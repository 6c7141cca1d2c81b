"""Tests for softsae_lib.stats (``docs/sae-variants.md`` §11: κ vs LID statistics)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from scipy import stats as st

from softsae_lib import stats as S


def _tied(n: int = 400, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Integer-valued κ (like L0, 1..6) and a coarsely rounded LID: heavy ties in both."""
    rng = np.random.default_rng(seed)
    lid = rng.gamma(4.0, 2.0, n)
    kappa = np.clip(np.round(lid / 3 + rng.normal(0, 1, n)), 1, 6)
    return kappa, np.round(lid)


def _clustered(n_clusters: int, size: int, seed: int, shared: float = 1.0, noise: float = 0.3,
               coupled: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """x, y sharing a per-cluster random effect (coupled) or with independent per-cluster effects."""
    rng = np.random.default_rng(seed)
    g = np.repeat(np.arange(n_clusters), size)
    u = rng.normal(0, shared, n_clusters)
    v = u if coupled else rng.normal(0, shared, n_clusters)
    x = u[g] + rng.normal(0, noise, g.size)
    y = v[g] + rng.normal(0, noise, g.size)
    return x, y, g


# ----------------------------------------------------------------------------- correlations


@pytest.mark.parametrize("ties", [False, True])
def test_correlations_match_scipy(ties: bool) -> None:
    if ties:
        x, y = _tied()
    else:
        rng = np.random.default_rng(1)
        x = rng.normal(size=300)
        y = 0.5 * x + rng.normal(size=300)
    out = S.correlations(x, y)
    assert out["n"] == x.size
    for name, f in [("pearson", st.pearsonr), ("spearman", st.spearmanr), ("kendall", st.kendalltau)]:
        ref = f(x, y)
        assert out[name] == pytest.approx(ref.statistic, abs=1e-12)
        assert out[f"{name}_p"] == pytest.approx(ref.pvalue, rel=1e-10, abs=1e-300)
    # Definitions, independently of scipy: Spearman = Pearson on average ranks; Kendall τ_b by pair counting.
    assert out["spearman"] == pytest.approx(np.corrcoef(st.rankdata(x), st.rankdata(y))[0, 1], abs=1e-12)
    sx, sy = np.sign(x[:, None] - x[None, :]), np.sign(y[:, None] - y[None, :])
    tau_b = (sx * sy).sum() / np.sqrt((sx != 0).sum() * (sy != 0).sum())
    assert out["kendall"] == pytest.approx(tau_b, abs=1e-12)
    # torch tensors give the same numbers
    tout = S.correlations(torch.from_numpy(x).float().double(), torch.from_numpy(y))
    assert tout["spearman"] == pytest.approx(out["spearman"], abs=1e-12)


def test_correlations_errors_name_argument() -> None:
    x = np.arange(10.0)
    with pytest.raises(ValueError, match="y has length 9 but x has length 10"):
        S.correlations(x, x[:9])
    with pytest.raises(ValueError, match=r"y contains 2 NaN"):
        S.correlations(x, np.r_[np.nan, np.nan, x[2:]])
    with pytest.raises(ValueError, match="x is constant"):
        S.correlations(np.ones(10), x)
    with pytest.raises(ValueError, match="y is constant"):
        S.correlations(x, np.full(10, 3.0))
    with pytest.raises(ValueError, match="1-D"):
        S.correlations(x[:, None], x)


# ----------------------------------------------------------------------------- partial correlation


def _partial_data(n: int = 500, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    C = rng.normal(size=(n, 3)) * [1.0, 5.0, 100.0] + [0.0, 10.0, 1000.0]
    x = C @ [0.5, 0.1, 0.01] + rng.normal(size=n)
    y = 0.3 * x + C @ [-0.2, 0.05, 0.0] + rng.normal(size=n)
    return x, y, C


def test_partial_matches_precision_matrix_and_hand_ols() -> None:
    x, y, C = _partial_data()
    out = S.partial_correlation(x, y, C)
    P = np.linalg.inv(np.cov(np.column_stack([x, y, C]), rowvar=False))
    assert out["r"] == pytest.approx(-P[0, 1] / np.sqrt(P[0, 0] * P[1, 1]), abs=1e-10)
    D = np.column_stack([np.ones(len(x)), C])
    ex = x - D @ np.linalg.solve(D.T @ D, D.T @ x)
    ey = y - D @ np.linalg.solve(D.T @ D, D.T @ y)
    assert out["r"] == pytest.approx(np.corrcoef(ex, ey)[0, 1], abs=1e-10)
    assert out["df"] == len(x) - 2 - 3 and out["n_covariates"] == 3 and out["n"] == len(x)


def test_partial_removes_confounder() -> None:
    rng = np.random.default_rng(3)
    n = 5000
    z = rng.normal(size=n)
    x, y = z + 0.5 * rng.normal(size=n), z + 0.5 * rng.normal(size=n)
    assert S.correlations(x, y)["pearson"] > 0.7
    for method in ("pearson", "spearman"):
        out = S.partial_correlation(x, y, z, method=method)
        assert abs(out["r"]) < 0.05
        assert out["ci_low"] < 0 < out["ci_high"]


def test_partial_spearman_invariant_to_monotone_transforms() -> None:
    x, y, C = _partial_data(seed=5)
    ref = S.partial_correlation(x, y, C, method="spearman")
    C2 = np.column_stack([np.arctan(C[:, 0]), -3 * C[:, 1] + 7, np.exp(C[:, 2] / 100)])
    out = S.partial_correlation(np.exp(x), y**3, C2, method="spearman")
    for k in ("r", "t", "p", "ci_low", "ci_high"):
        assert out[k] == pytest.approx(ref[k], rel=1e-9, abs=1e-12)
    # ... which the Pearson version is not
    assert abs(S.partial_correlation(np.exp(x), y**3, C2)["r"] - ref["r"]) > 1e-3


def test_partial_t_p_ci_consistent() -> None:
    x, y, C = _partial_data(n=80, seed=7)
    out = S.partial_correlation(x, y, C[:, :2], level=0.9)
    r, df = out["r"], out["df"]
    assert df == 80 - 2 - 2
    assert out["t"] == pytest.approx(r * np.sqrt(df / (1 - r * r)), rel=1e-12)
    assert out["p"] == pytest.approx(2 * st.t.sf(abs(out["t"]), df), rel=1e-12)
    assert out["ci_low"] < r < out["ci_high"]
    half = st.norm.ppf(0.95) / np.sqrt(80 - 3 - 2)
    assert out["ci_low"] == pytest.approx(np.tanh(np.arctanh(r) - half), rel=1e-12)
    assert out["ci_high"] == pytest.approx(np.tanh(np.arctanh(r) + half), rel=1e-12)
    wide = S.partial_correlation(x, y, C[:, :2], level=0.99)
    assert wide["ci_low"] < out["ci_low"] and wide["ci_high"] > out["ci_high"]


def test_partial_without_covariates_is_scipy_test() -> None:
    x, y = _tied(seed=2)
    for method, f in (("pearson", st.pearsonr), ("spearman", st.spearmanr)):
        out = S.partial_correlation(x, y, None, method=method)
        ref = f(x, y)
        assert out["r"] == pytest.approx(ref.statistic, abs=1e-12)
        assert out["p"] == pytest.approx(ref.pvalue, rel=1e-8)
        assert out["df"] == len(x) - 2 and out["n_covariates"] == 0


def test_partial_rank_deficient_covariates() -> None:
    x, y, C = _partial_data(n=200, seed=9)
    const, dup = np.full(200, 4.0), C[:, 2].copy()
    extra = {"pearson": 2 * C[:, 0] - C[:, 1], "spearman": np.exp(C[:, 0])}  # collinear (after ranking)
    for method in ("pearson", "spearman"):
        ref = S.partial_correlation(x, y, C, method=method)
        Cbad = np.column_stack([C, const, extra[method], dup])
        out = S.partial_correlation(torch.from_numpy(x), y, torch.from_numpy(Cbad), method=method)
        assert out["r"] == pytest.approx(ref["r"], abs=1e-9)
        assert out["df"] == ref["df"] and out["n_covariates"] == 3


def test_partial_errors() -> None:
    x, y, C = _partial_data(n=50)
    with pytest.raises(ValueError, match="x is constant"):
        S.partial_correlation(np.zeros(50), y, C)
    with pytest.raises(ValueError, match="y is constant"):
        S.partial_correlation(x, np.ones(50), C)
    with pytest.raises(ValueError, match="y has length 49"):
        S.partial_correlation(x, y[:49], C)
    Cn = C.copy()
    Cn[[1, 4], 0] = np.nan
    with pytest.raises(ValueError, match="covariates contains 2 NaN"):
        S.partial_correlation(x, y, Cn)
    with pytest.raises(ValueError, match="covariates must have shape"):
        S.partial_correlation(x, y, C[:40])
    with pytest.raises(ValueError, match="x is a linear function of the covariates"):
        S.partial_correlation(2 * C[:, 0] + 1, y, C)
    with pytest.raises(ValueError, match="method"):
        S.partial_correlation(x, y, C, method="kendall")
    with pytest.raises(ValueError, match="n > 3"):
        S.partial_correlation(x[:6], y[:6], C[:6])


# ----------------------------------------------------------------------------- holm


def test_holm_hand_example() -> None:
    p = np.array([0.01, 0.04, 0.03, 0.005])
    # sorted: 0.005·4 = 0.02, 0.01·3 = 0.03, 0.03·2 = 0.06, 0.04·1 = 0.04 → running max 0.06
    np.testing.assert_allclose(S.holm(p), [0.03, 0.06, 0.06, 0.02], rtol=1e-12)
    np.testing.assert_allclose(S.holm([0.5, 0.6, 0.01]), [1.0, 1.0, 0.03], rtol=1e-12)
    assert S.holm(np.array([[0.2, 0.01], [0.04, 0.3]])).shape == (2, 2)
    rng = np.random.default_rng(0)
    q = rng.uniform(size=50) ** 3
    adj = S.holm(q)
    assert np.all(adj >= q) and np.all(adj <= 1) and np.all(np.diff(adj[np.argsort(q)]) >= 0)
    with pytest.raises(ValueError, match="pvalues"):
        S.holm([0.1, np.nan])


# ----------------------------------------------------------------------------- cluster bootstrap


def test_cluster_bootstrap_deterministic_and_contains_estimate() -> None:
    x, y, g = _clustered(30, 20, seed=0)
    a = S.cluster_bootstrap_ci(x, y, g, n_boot=500, seed=11)
    b = S.cluster_bootstrap_ci(torch.from_numpy(x), torch.from_numpy(y), torch.from_numpy(g),
                               n_boot=500, seed=11)
    c = S.cluster_bootstrap_ci(x, y, g, n_boot=500, seed=12)
    assert a == b and a != c
    assert a["estimate"] == pytest.approx(st.spearmanr(x, y).statistic, abs=1e-12)
    assert a["ci_low"] < a["estimate"] < a["ci_high"]
    assert a["n_clusters"] == 30 and a["n_boot"] == a["n_valid"] == 500 and a["se"] > 0


@pytest.mark.parametrize("name", ["spearman", "pearson"])
def test_vectorised_bootstrap_equals_resampling(name: str) -> None:
    """Weighted (vectorised) replicates equal recomputing the statistic on the concatenated clusters."""
    kappa, lid = _tied(n=240, seed=4)
    g = np.array([f"doc{i % 17}" for i in range(240)])  # string labels, unequal cluster sizes
    f = st.spearmanr if name == "spearman" else st.pearsonr
    fast = S.cluster_bootstrap_ci(kappa, lid, g, statistic=name, n_boot=300, seed=3)
    slow = S.cluster_bootstrap_ci(kappa, lid, g, statistic=lambda a, b: f(a, b).statistic, n_boot=300, seed=3)
    for k in ("estimate", "ci_low", "ci_high", "se"):
        assert fast[k] == pytest.approx(slow[k], abs=1e-10)


def test_cluster_bootstrap_wider_than_iid_under_clustering() -> None:
    # 20 clusters × 100 points; x and y share a per-cluster random effect, so only ~20 independent units
    x, y, g = _clustered(20, 100, seed=0, noise=0.5)
    clus = S.cluster_bootstrap_ci(x, y, g, n_boot=1000, seed=0)
    iid = S.cluster_bootstrap_ci(x, y, np.arange(x.size), n_boot=1000, seed=0)
    assert clus["estimate"] == iid["estimate"]
    w_clus, w_iid = clus["ci_high"] - clus["ci_low"], iid["ci_high"] - iid["ci_low"]
    assert w_clus > 3 * w_iid and clus["se"] > 3 * iid["se"]  # ≈ 6× here


def test_cluster_bootstrap_kendall_and_errors() -> None:
    x, y, g = _clustered(12, 10, seed=2)
    out = S.cluster_bootstrap_ci(x, y, g, statistic="kendall", n_boot=100)
    assert out["estimate"] == pytest.approx(st.kendalltau(x, y).statistic)
    assert out["ci_low"] <= out["estimate"] <= out["ci_high"]
    with pytest.raises(ValueError, match="clusters has 1 distinct"):
        S.cluster_bootstrap_ci(x, y, np.zeros(x.size), n_boot=10)
    with pytest.warns(RuntimeWarning, match="only 3 clusters"):
        S.cluster_bootstrap_ci(x, y, g % 3, n_boot=50)
    with pytest.raises(ValueError, match="clusters must have shape"):
        S.cluster_bootstrap_ci(x, y, g[:-1])
    with pytest.raises(ValueError, match="statistic must be one of"):
        S.cluster_bootstrap_ci(x, y, g, statistic="tau")
    with pytest.raises(ValueError, match="n_boot"):
        S.cluster_bootstrap_ci(x, y, g, n_boot=0)


def test_cluster_bootstrap_drops_undefined_replicates() -> None:
    # Cluster 0 has constant x: a replicate drawing only cluster 0 is undefined (2 clusters → likely).
    x = np.r_[np.zeros(5), np.arange(5.0)]
    y = np.arange(10.0)
    g = np.r_[np.zeros(5), np.ones(5)]
    with pytest.warns(RuntimeWarning) as rec:
        out = S.cluster_bootstrap_ci(x, y, g, n_boot=200)
    assert any("undefined and dropped" in str(w.message) for w in rec)
    assert 0 < out["n_valid"] < 200


# ----------------------------------------------------------------------------- permutation test


def test_permutation_strong_and_null() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=200)
    strong = S.permutation_pvalue(x, x + rng.normal(size=200), n_perm=199)
    assert strong["p"] == pytest.approx(1 / 200) and strong["p"] <= 0.01 and strong["scheme"] == "iid"
    null = S.permutation_pvalue(x, rng.normal(size=200), n_perm=499, seed=1)
    assert null["p"] > 0.05
    assert round(null["p"] * 500, 9) == int(round(null["p"] * 500))  # (1 + hits)/(1 + n_perm)


def test_permutation_null_is_roughly_uniform() -> None:
    ps = [S.permutation_pvalue(*np.random.default_rng(s).normal(size=(2, 40)), n_perm=99, seed=s)["p"]
          for s in range(60)]
    assert 0.3 < np.mean(ps) < 0.7 and np.mean(np.array(ps) <= 0.1) < 0.25


@pytest.mark.parametrize("name", ["spearman", "pearson"])
def test_permutation_fast_path_equals_callable(name: str) -> None:
    x, y = _tied(n=150, seed=6)
    f = st.spearmanr if name == "spearman" else st.pearsonr
    strata = np.arange(150) % 4
    for kw in ({}, {"strata": strata}):
        fast = S.permutation_pvalue(x, y, name, n_perm=200, seed=2, **kw)
        slow = S.permutation_pvalue(x, y, lambda a, b: f(a, b).statistic, n_perm=200, seed=2, **kw)
        assert fast["p"] == slow["p"] and fast["estimate"] == pytest.approx(slow["estimate"], abs=1e-12)


def test_permutation_respects_strata() -> None:
    rng = np.random.default_rng(0)
    strata = rng.integers(0, 5, 300)
    x = strata + rng.normal(0, 0.1, 300)
    y = strata + rng.normal(0, 0.1, 300)  # association entirely carried by the stratum
    seen: list[np.ndarray] = []

    def record(a: np.ndarray, b: np.ndarray) -> float:
        seen.append(b.copy())
        return st.spearmanr(a, b).statistic

    out = S.permutation_pvalue(x, y, record, n_perm=50, strata=strata)
    assert out["scheme"] == "strata" and len(seen) == 51
    for b in seen[1:]:
        assert not np.array_equal(b, y)
        for k in range(5):  # every value stays in its stratum
            np.testing.assert_array_equal(np.sort(b[strata == k]), np.sort(y[strata == k]))
    # ρ ≈ 0.97 comes from the strata alone: within-strata shuffles keep it (no association given the stratum),
    # while iid shuffles destroy it.
    assert out["p"] > 0.05
    assert S.permutation_pvalue(x, y, n_perm=199, strata=strata)["p"] > 0.05
    assert S.permutation_pvalue(x, y, n_perm=199)["p"] <= 0.01


def test_permutation_cluster_blocks() -> None:
    x, y, g = _clustered(12, 8, seed=3)
    seen: list[np.ndarray] = []

    def record(a: np.ndarray, b: np.ndarray) -> float:
        seen.append(b.copy())
        return st.pearsonr(a, b).statistic

    out = S.permutation_pvalue(x, y, record, n_perm=30, clusters=g)
    assert out["scheme"] == "clusters"
    blocks = {tuple(y[g == k]) for k in range(12)}
    for b in seen[1:]:  # each cluster receives, in order, the whole y-block of some cluster
        assert {tuple(b[g == k]) for k in range(12)} == blocks


def test_permutation_cluster_null_is_valid_where_iid_is_not() -> None:
    # independent per-cluster effects in x and y: no association, but strong within-cluster dependence
    x, y, g = _clustered(10, 50, seed=4, noise=0.2, coupled=False)
    iid = S.permutation_pvalue(x, y, n_perm=199)
    clus = S.permutation_pvalue(x, y, n_perm=199, clusters=g)
    assert iid["p"] <= 0.01 < 0.05 < clus["p"]


def test_permutation_cluster_sizes_and_errors() -> None:
    x, y = np.arange(12.0), np.arange(12.0)[::-1] ** 2
    g_unequal = np.r_[[0] * 3, [1] * 3, [2] * 6]  # cluster 2 has a unique size
    with pytest.warns(RuntimeWarning, match="1 of 3 clusters"):
        S.permutation_pvalue(x, y, n_perm=20, clusters=g_unequal)
    with pytest.raises(ValueError, match="different sizes"):
        S.permutation_pvalue(x, y, n_perm=20, clusters=np.r_[[0] * 2, [1] * 4, [2] * 6])
    with pytest.raises(ValueError, match="not both"):
        S.permutation_pvalue(x, y, clusters=g_unequal, strata=g_unequal)
    with pytest.raises(ValueError, match="single member"):
        S.permutation_pvalue(x, y, strata=np.arange(12))
    with pytest.raises(ValueError, match="strata must have shape"):
        S.permutation_pvalue(x, y, strata=np.arange(11))
    with pytest.raises(ValueError, match="n_perm"):
        S.permutation_pvalue(x, y, n_perm=-3)


# ----------------------------------------------------------------------------- summary


def test_summarize_association() -> None:
    x, y, g = _clustered(15, 20, seed=5)
    kappa = np.clip(np.round(3 * x + 5), 1, 8)
    C = np.column_stack([y**2, g])
    keys_all = {"n", "kappa_min", "kappa_max", "share_at_min", "share_at_max", "pearson", "pearson_p",
                "spearman", "spearman_p", "kendall", "kendall_p", "partial_spearman", "partial_spearman_p",
                "partial_spearman_ci_low", "partial_spearman_ci_high", "partial_df", "n_covariates",
                "spearman_ci_low", "spearman_ci_high", "spearman_se", "n_clusters"}
    bare = S.summarize_association(torch.from_numpy(kappa).float(), y)
    assert set(bare) == keys_all and np.isnan(bare["partial_spearman"]) and np.isnan(bare["spearman_ci_low"])
    assert bare["share_at_min"] == pytest.approx(np.mean(kappa == 1))
    assert bare["share_at_max"] == pytest.approx(np.mean(kappa == 8))
    assert bare["spearman"] == pytest.approx(st.spearmanr(kappa, y).statistic, abs=1e-12)
    full = S.summarize_association(kappa, y, covariates=C, clusters=g, n_boot=300, seed=4,
                                   kappa_bounds=(0.0, 8.0))
    assert full["share_at_min"] == 0.0 and full["share_at_max"] == bare["share_at_max"]
    pc = S.partial_correlation(kappa, y, C, method="spearman")
    assert full["partial_spearman"] == pc["r"] and full["partial_df"] == pc["df"] == 300 - 4
    bs = S.cluster_bootstrap_ci(kappa, y, g, n_boot=300, seed=4)
    assert (full["spearman_ci_low"], full["spearman_ci_high"]) == (bs["ci_low"], bs["ci_high"])
    assert full["n_clusters"] == 15
    with pytest.raises(ValueError, match="lid has length"):
        S.summarize_association(kappa, y[:-1])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        S.summarize_association(kappa, y, clusters=g, n_boot=50)
