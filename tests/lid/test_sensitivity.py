"""softsae_lib.lid.sensitivity: the estimators over a grid of K and N recover a known dimension, move in
the expected direction with K and N on noisy data, and the summaries line up with the per-point frame."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from softsae_lib.lid.sensitivity import (
    estimator_agreement,
    lid_association,
    lid_recovery,
    lid_sensitivity,
    nested_subsamples,
    per_point,
    sensitivity_summary,
)

pytestmark = pytest.mark.usefixtures("single_thread")


def _flat(n: int, m: int, d: int, noise: float, seed: int = 0) -> torch.Tensor:
    """n points uniform in [0, 1]^m on a random m-flat of R^d, plus isotropic noise."""
    g = torch.Generator().manual_seed(seed)
    basis, _ = torch.linalg.qr(torch.randn(d, m, generator=g, dtype=torch.float64))
    x = torch.rand(n, m, generator=g, dtype=torch.float64) @ basis.T
    return x + noise * torch.randn(n, d, generator=g, dtype=torch.float64)


def test_nested_subsamples_are_nested_and_capped():
    subs = nested_subsamples(100, [10, 50, 500], seed=3)
    assert list(subs) == [10, 50, 100]
    assert set(subs[10]) <= set(subs[50]) <= set(subs[100]) and len(set(subs[100])) == 100


def test_mle_and_lpca_recover_a_known_dimension_and_the_frame_is_complete():
    # two clusters: a 3-flat and an 8-flat (far apart) in R^16, no noise
    a = _flat(1200, 3, 16, 0.0, seed=1)
    b = _flat(1200, 8, 16, 0.0, seed=2) + 50.0
    x = torch.cat([a, b])
    truth = np.r_[np.full(1200, 3.0), np.full(1200, 8.0)]
    frame = lid_sensitivity(x, ks=(10, 20), ns=(800, 2400), seed=0)
    assert set(frame.columns) == {"point", "estimator", "n", "k", "lid"}
    assert len(frame) == (800 + 2400) * 2 * 3
    rec = lid_recovery(frame, truth).set_index(["estimator", "n", "k"])
    row = rec.loc[("mle", 2400, 20)]
    assert row["median_rel_error"] < 0.2 and row["spearman"] > 0.8, row.to_dict()
    # local PCA (ratio rule at 0.9) is exact on the 3-flat and biased low on the 8-flat at K = 20
    lp = frame[(frame.estimator == "lpca") & (frame.n == 2400) & (frame.k == 20)]
    assert lp.loc[lp.point < 1200, "lid"].median() == 3
    assert 5 <= lp.loc[lp.point >= 1200, "lid"].median() < 8
    # every estimator ranks the two clusters the right way round
    assert (rec["spearman"] > 0.5).all()


def test_k_and_n_dependence_on_a_noisy_plane():
    # a 2-plane in R^10 with noise: small neighbourhoods see the noise (high LID), large ones the plane
    x = _flat(2000, 2, 10, 0.01, seed=4)
    frame = lid_sensitivity(x, ks=(10, 100), ns=(300, 2000), estimators=("mle", "lpca"), seed=0)
    summ = sensitivity_summary(frame).set_index(["estimator", "n", "k"])
    for est in ("mle", "lpca"):
        assert summ.loc[(est, 2000, 10), "median"] > summ.loc[(est, 2000, 100), "median"] + 1  # falls with K
        assert summ.loc[(est, 2000, 10), "median"] > summ.loc[(est, 300, 10), "median"]  # rises with N
        assert summ.loc[(est, 2000, 100), "median"] == pytest.approx(2.0, abs=0.6)
        assert summ.loc[(est, 2000, 10), "rank_vs_largest_n"] == pytest.approx(1.0)


def test_agreement_association_and_wide_table():
    x = _flat(600, 4, 12, 0.0, seed=5)
    frame = lid_sensitivity(x, ks=(10, 20, 700), ns=(600,), seed=1)  # K ≥ N is skipped
    assert sorted(frame["k"].unique()) == [10, 20]
    agree = estimator_agreement(frame)
    assert set(agree["pair"]) == {"lpca~mle", "lpca~twonn", "mle~twonn"} and len(agree) == 6
    mle_k20 = frame[(frame.estimator == "mle") & (frame.k == 20)].set_index("point")["lid"]
    values = np.zeros(600)
    values[mle_k20.index] = mle_k20.to_numpy()
    assoc = lid_association(frame, values, "mle_copy").set_index(["estimator", "n", "k"])
    assert assoc.loc[("mle", 600, 20), "spearman"] == pytest.approx(1.0)
    wide = per_point(frame)
    assert list(wide.columns) == ["lpca_k10", "lpca_k20", "mle_k10", "mle_k20", "twonn_k10", "twonn_k20"]
    assert np.allclose(wide["mle_k20"].to_numpy(), mle_k20.sort_index().to_numpy())
    with pytest.raises(ValueError, match="unknown estimators"):
        lid_sensitivity(x, ks=(10,), ns=(100,), estimators=("pca",))
