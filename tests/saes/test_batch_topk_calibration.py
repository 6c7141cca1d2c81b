"""BatchTopK's held-out calibration (BatchTopKSAE.calibrate_l0): mean L0 on unseen rows hits k."""

from __future__ import annotations

import pytest
import torch

from softsae_lib import TrainConfig, train_sae
from softsae_lib.data.synthetic import sparse_superposition
from softsae_lib.saes import BatchTopKSAE
from softsae_lib.saes.batch_topk import l0_quantile_threshold

pytestmark = pytest.mark.usefixtures("single_thread")

K = 4


def test_l0_quantile_threshold_keeps_exactly_round_k_n() -> None:
    gen = torch.Generator().manual_seed(0)
    acts = [torch.rand(50, 20, generator=gen) * (torch.rand(50, 20, generator=gen) > 0.5) for _ in range(3)]
    theta = l0_quantile_threshold(acts, 2.5)
    assert sum(int((a > theta).sum()) for a in acts) == round(2.5 * 150)
    # fewer positives than asked: θ = 0 keeps every positive entry
    assert l0_quantile_threshold([torch.zeros(4, 3)], 1.0) == 0.0
    with pytest.raises(ValueError, match="positive"):
        l0_quantile_threshold(acts, 0.0)


def test_calibrate_l0_on_held_out_split_hits_k_on_another_held_out_split() -> None:
    """Trained for many epochs on few rows (as in the SAELens comparison), calibrated on one held-out
    split, evaluated on a different one: the mean L0 there is within 2% of k."""
    data = sparse_superposition(2048 + 2 * 6000, d=32, n_features=128, max_active=6, seed=0)
    x_train, x_cal, x_test = data.x[:2048], data.x[2048:8048], data.x[8048:]
    model = BatchTopKSAE(d_model=32, dict_size=256, k=K, seed=0)
    train_sae(model, x_train, TrainConfig(steps=400, batch_size=256, lr=3e-3, warmup_steps=0,
                                          normalization_batches=4, progress=False))
    ema = float(model.threshold)
    assert ema > 0  # the default EMA estimate is still there until calibrate_l0 is asked for
    theta = model.calibrate_l0(x_cal)
    assert float(model.threshold) == theta and theta != ema
    l0_cal = float((model.encode(x_cal) != 0).sum(1).float().mean())
    l0_test = float((model.encode(x_test) != 0).sum(1).float().mean())
    assert l0_cal == pytest.approx(K, abs=1e-3)  # exact on the calibration rows (no ties)
    assert abs(l0_test / K - 1) < 0.02
    # any target, and batches work as well as one tensor
    model.calibrate_l0([x_cal[:3000], x_cal[3000:]], target_l0=2.5)
    assert float((model.encode(x_cal) != 0).sum(1).float().mean()) == pytest.approx(2.5, abs=1e-3)
    with pytest.raises(ValueError, match="target_l0"):
        model.calibrate_l0(x_cal, target_l0=0)
