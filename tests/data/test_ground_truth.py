"""SAELens synthetic splits and feature-recovery scores (softsae_lib/experiments/ground_truth.py)."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("sae_lens")

from softsae_lib.experiments.ground_truth import feature_recovery, zipf_synthetic  # noqa: E402


def test_zipf_synthetic_splits_are_disjoint_deterministic_and_leave_the_global_rng_alone():
    state = torch.random.get_rng_state()
    a = zipf_synthetic(16, 8, n_train=300, n_cal=100, n_test=200, seed=3)
    assert torch.equal(torch.random.get_rng_state(), state)
    b = zipf_synthetic(16, 8, n_train=300, n_cal=100, n_test=200, seed=3)
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.x_test, b.x_test)
    assert a.x_train.shape == (300, 8) and a.x_cal.shape == (100, 8) and a.x_test.shape == (200, 8)
    assert a.features.shape == (16, 8) and a.true_active_test.shape == (200,)
    assert not torch.equal(a.x_cal[:100], a.x_test[:100])
    # Zipfian firing in [0.01, 0.3] over 16 features: a mean active count of about 1.6
    assert 0.5 < a.true_active_test.float().mean() < 4


def test_feature_recovery_scores_the_true_dictionary_perfectly_and_noise_poorly():
    gen = torch.Generator().manual_seed(0)
    feats = torch.nn.functional.normalize(torch.randn(10, 32, generator=gen), dim=1)
    # any order, any norm, extra atoms
    shuffled = torch.cat([3 * feats[torch.randperm(10, generator=gen)], torch.randn(5, 32, generator=gen)])
    perfect = feature_recovery(shuffled, feats)
    assert perfect["mcc"] == pytest.approx(1.0, abs=1e-5) and perfect["features_found"] == 10
    noise = feature_recovery(torch.randn(15, 32, generator=torch.Generator().manual_seed(1)), feats)
    assert noise["mcc"] < 0.7 and noise["features_found"] == 0
