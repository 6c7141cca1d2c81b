"""Known-feature synthetic data from SAELens's generator, and how well an SAE recovers its features.

Used by ``benchmarks/peer_saelens.py`` (softsae_lib against SAELens on the same data) and by notebook
05's ground-truth arm (per-sample true active count against SoftSAE's k̂ and the other models' L0).

The data come from ``sae_lens.synthetic.SyntheticModel`` (its public API; sae-lens is the optional
``saelens`` extra): ``num_features`` unit directions in ℝ^d, feature i fires independently with a
Zipfian probability (SAELens's default: 0.3 for the most frequent down to 0.01), its magnitude when
firing is ReLU(μ_i + 0.1·ε) with per-feature means μ_i ~ |N(1, 0.5²)| (folded normal), plus SAELens's
default bias of norm 1. With 512 features that is 6.9 active features per sample on average.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

MAGNITUDE_MEAN, MAGNITUDE_SPREAD, MAGNITUDE_NOISE = 1.0, 0.5, 0.1
"""μ_i ~ |N(MAGNITUDE_MEAN, MAGNITUDE_SPREAD²)| per feature; per-firing noise std MAGNITUDE_NOISE."""
FOUND_COS = 0.9
"""A true feature counts as found when some decoder atom has cosine > FOUND_COS with it."""


@dataclass
class ZipfData:
    """Train / calibration / held-out splits of one SAELens synthetic model (disjoint samples)."""

    x_train: torch.Tensor
    """(N_train, d) training rows."""
    x_cal: torch.Tensor
    """(N_cal, d) held-out rows for inference-threshold calibration (never trained on)."""
    x_test: torch.Tensor
    """(N_test, d) held-out rows every metric is measured on."""
    features: torch.Tensor
    """(num_features, d) the true feature directions."""
    true_active_test: torch.Tensor
    """(N_test,) long: how many true features fire in each held-out row."""


def _synthetic_model(num_features: int, hidden_dim: int, seed: int):
    try:
        from sae_lens.synthetic import (
            FoldedNormalMagnitudeConfig,
            SyntheticModel,
            SyntheticModelConfig,
            ZipfianFiringProbabilityConfig,
        )
    except ImportError as e:  # an optional dependency: say which install provides it
        raise ImportError("the ground-truth data need sae-lens: pip install 'softsae[saelens]'") from e
    cfg = SyntheticModelConfig(
        num_features=num_features, hidden_dim=hidden_dim, firing_probability=ZipfianFiringProbabilityConfig(),
        mean_firing_magnitudes=FoldedNormalMagnitudeConfig(mean=MAGNITUDE_MEAN, std=MAGNITUDE_SPREAD),
        std_firing_magnitudes=MAGNITUDE_NOISE, seed=seed)
    return SyntheticModel(cfg)


@torch.no_grad()
def zipf_synthetic(num_features: int, hidden_dim: int, n_train: int, n_cal: int, n_test: int,
                   seed: int = 0) -> ZipfData:
    """Sample the three splits from one synthetic model; deterministic given ``seed``.

    SAELens samples with the global torch RNG, so sampling runs inside ``fork_rng`` with a fixed
    seed: the caller's RNG state is left as it was and repeated calls give the same rows.
    """
    model = _synthetic_model(num_features, hidden_dim, seed)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        x, acts = model.sample_with_features(n_train + n_cal + n_test)
    x = x.float().contiguous()
    # Rows: train | test | calibration, so a larger calibration split leaves the test rows unchanged.
    a, b = n_train, n_train + n_test
    return ZipfData(x[:a], x[b:], x[a:b], model.feature_dict.feature_vectors.detach().float().clone(),
                    (acts[a:b] > 0).sum(dim=1))


@torch.no_grad()
def feature_recovery(decoder: torch.Tensor, features: torch.Tensor, found_cos: float = FOUND_COS) -> dict:
    """MCC (SAELens's ``mean_correlation_coefficient``, Hungarian matching) and features found.

    Args:
        decoder: (F, d) decoder atoms (rows; any norm).
        features: (n, d) true feature directions.

    Returns:
        ``mcc`` in [0, 1]; ``features_found``: true features with some atom at cosine > ``found_cos``.
    """
    from sae_lens.synthetic import mean_correlation_coefficient

    dec, feat = decoder.detach().float().cpu(), features.detach().float().cpu()
    cos = torch.nn.functional.normalize(feat, dim=1) @ torch.nn.functional.normalize(dec, dim=1).T
    return {"mcc": float(mean_correlation_coefficient(dec, feat)),
            "features_found": int((cos.max(dim=1).values > found_cos).sum())}


def ground_truth_arm(data: ZipfData, p, archs: tuple[str, ...], log=print):
    """Notebook 05's ground-truth arm: every arch at SoftSAE's realised mean L0 on ``data``.

    Thresholded models are calibrated on ``data.x_cal`` (held out, not trained on), so their held-out
    L0 is their budget. The per-sample target is the true active count; the table (an
    :class:`~softsae_lib.experiments.architectures.ArmResult` table, whose ``spearman_lid`` columns here
    are Spearman against ``true_active``) gains each model's ``mcc`` and ``features_found``.

    Args:
        data: :func:`zipf_synthetic` splits.
        p: the arm's ``Architectures`` settings (``P.zipf_settings()``).
    """
    from softsae_lib.experiments.architectures import compare_architectures, held_out_calibrator

    truth = {"true_active": data.true_active_test.numpy()}
    arm = compare_architectures(data.x_train, data.x_test, p, truth, lid_col="true_active", clusters=None,
                                archs=archs, log=log, after_training=held_out_calibrator(data.x_cal, p))
    recovery = [feature_recovery(arm.models[a].model.W_dec, data.features) for a in arm.table["model"]]
    arm.table["mcc"] = [r["mcc"] for r in recovery]
    arm.table["features_found"] = [r["features_found"] for r in recovery]
    return arm
