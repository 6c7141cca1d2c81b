"""Tests for softsae_lib.metrics (``docs/sae-variants.md`` §10)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from softsae_lib import metrics as M


def _data(n: int = 300, d: int = 7, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64) * 2 + 3
    x_hat = 0.8 * x + 0.3 * torch.randn(n, d, generator=g, dtype=torch.float64)
    return x, x_hat


def _shifted_batches(seed: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Uneven batches whose means differ strongly, so per-batch centring understates variance."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for size, shift in [(5, -4.0), (37, 0.0), (1, 9.0), (120, 3.0), (18, -7.0)]:
        x = torch.randn(size, 6, generator=g, dtype=torch.float64) + shift
        out.append((x, x + 0.5 * torch.randn(size, 6, generator=g, dtype=torch.float64)))
    return out


def test_reconstruction_metrics_match_numpy() -> None:
    x, x_hat = _data()
    xn, xh = x.numpy(), x_hat.numpy()
    e = xn - xh
    m = M.reconstruction_metrics(x, x_hat)
    fvu = (e**2).sum() / ((xn - xn.mean(0)) ** 2).sum()
    xnorm, xhnorm = np.linalg.norm(xn, axis=1), np.linalg.norm(xh, axis=1)
    assert m["fvu"] == pytest.approx(fvu, rel=1e-12)
    assert m["explained_variance"] == pytest.approx(1 - fvu, rel=1e-12)
    assert m["mse"] == pytest.approx((e**2).mean(), rel=1e-12)
    assert m["rse"] == pytest.approx(((e**2).sum(1) / xnorm**2).mean(), rel=1e-12)
    assert m["cosine"] == pytest.approx(((xn * xh).sum(1) / (xnorm * xhnorm)).mean(), rel=1e-12)
    assert m["norm_ratio"] == pytest.approx((xhnorm / xnorm).mean(), rel=1e-12)
    gamma = (xhnorm**2).mean() / (xn * xh).sum(1).mean()
    assert m["relative_reconstruction_bias"] == pytest.approx(gamma, rel=1e-12)
    assert m["n_samples"] == 300
    # FVU must use the mean, not the raw second moment (x has mean 3, so these differ a lot).
    assert m["fvu"] > 1.5 * (e**2).sum() / (xn**2).sum()


def test_convenience_functions_agree_with_dict() -> None:
    x, x_hat = _data(seed=3)
    m = M.reconstruction_metrics(x, x_hat)
    assert M.fvu(x, x_hat) == m["fvu"]
    assert M.explained_variance(x, x_hat) == m["explained_variance"]
    assert M.mse(x, x_hat) == m["mse"]
    assert M.cosine_similarity(x, x_hat) == m["cosine"]
    assert M.norm_ratio(x, x_hat) == m["norm_ratio"]
    assert M.relative_reconstruction_bias(x, x_hat) == m["relative_reconstruction_bias"]


def test_streamed_equals_one_shot_and_global_mean_matters() -> None:
    batches = _shifted_batches()
    stats = None
    for xb, xhb in batches:
        stats = M.merge_stats(stats, M.reconstruction_stats(xb, xhb))
    streamed = M.reconstruction_metrics_from_stats(stats)
    x, x_hat = torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])
    one_shot = M.reconstruction_metrics(x, x_hat)
    assert streamed.keys() == one_shot.keys()
    for k in one_shot:
        assert streamed[k] == pytest.approx(one_shot[k], rel=1e-12, abs=1e-12), k
    # Per-batch centring (the bug the global mean avoids) gives a markedly larger FVU here.
    err = sum(float(((xb - xhb) ** 2).sum()) for xb, xhb in batches)
    per_batch_var = sum(float(((xb - xb.mean(0)) ** 2).sum()) for xb, _ in batches)
    assert err / per_batch_var > 2 * one_shot["fvu"]


def test_merge_stats_identity_and_errors() -> None:
    x, x_hat = _data(n=10)
    s = M.reconstruction_stats(x, x_hat)
    assert M.merge_stats(None, s) == s and M.merge_stats({}, s) == s and M.merge_stats(s, None) == s
    assert M.merge_stats(None, None) == {}
    other = M.reconstruction_stats(torch.ones(3, 4), torch.ones(3, 4))
    with pytest.raises(ValueError, match="dimension"):
        M.merge_stats(s, other)
    with pytest.raises(ValueError, match="no samples"):
        M.reconstruction_metrics_from_stats(M.merge_stats(None, None))


def test_perfect_reconstruction() -> None:
    x, _ = _data(seed=5)
    m = M.reconstruction_metrics(x, x.clone())
    assert m["fvu"] == 0.0 and m["mse"] == 0.0 and m["rse"] == 0.0
    assert m["explained_variance"] == 1.0
    assert m["cosine"] == pytest.approx(1.0, abs=1e-12)
    assert m["norm_ratio"] == pytest.approx(1.0, abs=1e-12)
    assert m["relative_reconstruction_bias"] == pytest.approx(1.0, abs=1e-12)


def test_half_scaled_reconstruction() -> None:
    x, _ = _data(seed=6)
    m = M.reconstruction_metrics(x, 0.5 * x)
    assert m["relative_reconstruction_bias"] == pytest.approx(0.5, abs=1e-12)
    assert m["norm_ratio"] == pytest.approx(0.5, abs=1e-12)
    assert m["rse"] == pytest.approx(0.25, abs=1e-12)
    assert m["cosine"] == pytest.approx(1.0, abs=1e-12)


def test_mean_reconstruction_has_fvu_one() -> None:
    x, _ = _data(seed=7)
    m = M.reconstruction_metrics(x, x.mean(0, keepdim=True).expand_as(x))
    assert m["fvu"] == pytest.approx(1.0, abs=1e-12)
    assert m["explained_variance"] == pytest.approx(0.0, abs=1e-12)


def test_low_precision_input_is_upcast_not_reduced_in_low_precision() -> None:
    x, x_hat = _data(seed=8)
    x32, xh32 = x.float(), x_hat.float()
    m32 = M.reconstruction_metrics(x32, xh32)
    m64 = M.reconstruction_metrics(x32.double(), xh32.double())
    assert m32 == m64  # float32 -> float64 is exact, so results must be bit-identical
    mbf = M.reconstruction_metrics(x.bfloat16(), x_hat.bfloat16())
    assert all(isinstance(v, float) for v in mbf.values())
    assert mbf["fvu"] == pytest.approx(m64["fvu"], rel=0.05)


def test_rse_and_norm_ratio_skip_zero_rows() -> None:
    x = torch.tensor([[0.0, 0.0], [3.0, 4.0], [1.0, 0.0]], dtype=torch.float64)
    x_hat = torch.tensor([[1.0, 1.0], [3.0, 4.0], [2.0, 0.0]], dtype=torch.float64)
    m = M.reconstruction_metrics(x, x_hat)
    assert m["rse"] == pytest.approx((0.0 + 1.0) / 2)
    assert m["norm_ratio"] == pytest.approx((1.0 + 2.0) / 2)
    assert m["cosine"] == pytest.approx((0.0 + 1.0 + 1.0) / 3)  # zero row counts as cosine 0
    assert all(math.isfinite(v) for v in m.values())


def test_reconstruction_errors_name_argument() -> None:
    x = torch.randn(4, 3)
    with pytest.raises(ValueError, match="x_hat"):
        M.reconstruction_metrics(x, torch.randn(4, 2))
    with pytest.raises(ValueError, match="x_hat"):
        M.reconstruction_metrics(x, torch.randn(5, 3))
    with pytest.raises(ValueError, match="x must be 2-D"):
        M.reconstruction_metrics(torch.randn(3), torch.randn(3))
    with pytest.raises(ValueError, match=r"x is empty \(N = 0\)"):
        M.reconstruction_metrics(torch.zeros(0, 3), torch.zeros(0, 3))
    with pytest.raises(ValueError, match="zero total variance.*undefined"):
        M.reconstruction_metrics(torch.full((5, 3), 2.5), torch.zeros(5, 3))


# --------------------------------------------------------------------------------- sparsity

CODES = torch.tensor(
    [
        # latent: 0    1    2    3    4
        [1.0, 0.0, 0.0, 2.0, 0.0],
        [1.0, 0.0, 0.0, 0.0, 0.0],
        [1.0, -0.5, 0.0, 0.0, 0.0],  # negative values count as active
        [1.0, 0.0, 0.0, 0.0, 0.0],
    ]
)


def test_l0_per_sample_and_summary() -> None:
    l0 = M.l0_per_sample(CODES)
    assert l0.dtype == torch.long and l0.tolist() == [2, 1, 2, 1]
    s = M.l0_summary(l0)
    assert s["mean"] == 1.5 and s["std"] == 0.5 and s["min"] == 1.0 and s["max"] == 2.0
    assert s["p50"] == 1.5 and s["p5"] == pytest.approx(1.0) and s["p95"] == pytest.approx(2.0)
    big = torch.arange(101)
    sb = M.l0_summary(big)
    assert [sb[f"p{p}"] for p in (5, 25, 50, 75, 95)] == [5.0, 25.0, 50.0, 75.0, 95.0]


def test_feature_density_and_sparsity_metrics() -> None:
    counts = M.feature_counts(CODES)
    assert counts.dtype == torch.long and counts.tolist() == [4, 1, 0, 1, 0]
    assert M.feature_density(CODES).tolist() == [1.0, 0.25, 0.0, 0.25, 0.0]
    s = M.sparsity_metrics(CODES)
    assert s["dead_fraction"] == pytest.approx(2 / 5) and s["alive_fraction"] == pytest.approx(3 / 5)
    assert s["dense_fraction_0.1"] == pytest.approx(3 / 5)
    assert s["dense_fraction_0.01"] == pytest.approx(3 / 5)
    assert s["dense_mass_0.1"] == pytest.approx(1.0)
    # A rarer latent separates the two thresholds: density 0.05 is dense at 0.01 but not at 0.1.
    counts = torch.tensor([10, 1, 0, 0])
    s = M.sparsity_metrics_from_counts(counts, 20)
    assert s["dense_fraction_0.1"] == pytest.approx(1 / 4)
    assert s["dense_fraction_0.01"] == pytest.approx(2 / 4)
    assert s["dense_mass_0.1"] == pytest.approx(0.5 / 0.55) and s["dense_mass_0.01"] == pytest.approx(1.0)


def test_all_dead_codes_have_zero_mass() -> None:
    s = M.sparsity_metrics(torch.zeros(3, 4))
    assert s["dead_fraction"] == 1.0 and s["alive_fraction"] == 0.0
    assert s["dense_mass_0.1"] == 0.0 and s["dense_mass_0.01"] == 0.0


def test_streamed_counts_equal_one_shot() -> None:
    g = torch.Generator().manual_seed(0)
    codes = torch.relu(torch.randn(50, 30, generator=g) - 1.5)
    counts = sum(M.feature_counts(b) for b in codes.split([7, 1, 30, 12]))
    assert torch.equal(counts, M.feature_counts(codes))
    assert M.sparsity_metrics_from_counts(counts, 50) == M.sparsity_metrics(codes)


def test_sparsity_errors_name_argument() -> None:
    with pytest.raises(ValueError, match="codes must be 2-D"):
        M.l0_per_sample(torch.ones(3))
    with pytest.raises(ValueError, match="codes must be 2-D"):
        M.sparsity_metrics(torch.ones(2, 3, 4))
    with pytest.raises(ValueError, match="codes is empty"):
        M.feature_counts(torch.zeros(0, 5))
    with pytest.raises(ValueError, match="l0 is empty"):
        M.l0_summary(torch.zeros(0, dtype=torch.long))
    with pytest.raises(ValueError, match="l0 must be a 1-D"):
        M.l0_summary(torch.zeros(2, 2))
    with pytest.raises(ValueError, match="n_samples"):
        M.sparsity_metrics_from_counts(torch.tensor([5, 1]), 4)  # counts from more rows than N
    with pytest.raises(ValueError, match="n_samples must be positive"):
        M.sparsity_metrics_from_counts(torch.tensor([0, 0]), 0)
    with pytest.raises(ValueError, match="counts must be a 1-D"):
        M.sparsity_metrics_from_counts(torch.zeros(2, 2, dtype=torch.long), 4)
