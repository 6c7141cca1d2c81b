"""Training-health checks: each check fails on the history pattern it is meant to catch."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from softsae_lib.training.health import (
    HealthCriteria,
    check_health,
    health_report,
    health_summary,
    is_healthy,
    verdict,
)


def history(steps: int = 1000, fvu=None, dead=None, k_hat=None, k_std=None, k: float = 10.0,
            hard_from: float | None = 0.9, decay_from: float = 0.8) -> pd.DataFrame:
    """A trainer-like history, one row per 10 steps; callables of the progress t ∈ [0, 1] give each column."""
    step = np.arange(0, steps, 10)
    t = step / steps
    lr = np.where(t < 0.05, t / 0.05, np.where(t < decay_from, 1.0, (1 - t) / (1 - decay_from))) * 1e-3
    frame = pd.DataFrame({
        "step": step, "lr": lr, "k": k,
        "fvu_batch": (fvu or (lambda t: 0.01 + 0.5 * np.exp(-30 * t)))(t),
        "dead_fraction": (dead or (lambda t: np.minimum(0.2, t)))(t),
        "hard": t >= hard_from if hard_from is not None else np.zeros_like(t, dtype=bool),
    })
    frame["loss"] = frame["fvu_batch"]
    if k_hat is not None:
        frame["k_hat_mean"] = k_hat(t)
        frame["k_hat_std"] = (k_std or (lambda t: np.full_like(t, 2.0)))(t)
    return frame


def checks(table: pd.DataFrame) -> dict[str, bool]:
    return dict(zip(table["check"], table["passed"], strict=True))


def test_plateaued_run_passes_every_check():
    table = check_health(history(k_hat=lambda t: np.full_like(t, 9.5)))
    assert is_healthy(table), table
    assert set(table["check"]) == {"finite", "converged", "dead_stable", "dead_ceiling", "k_binds",
                                   "k_spread_stable"}


def test_a_loss_still_falling_before_the_decay_is_not_converged():
    # falls ~25% over the last 20% of the constant-lr steps
    table = check_health(history(fvu=lambda t: 0.1 * np.exp(-1.5 * t)))
    assert not checks(table)["converged"]
    assert table.set_index("check").loc["converged", "value"] > 0.05


def test_the_lr_decay_and_hard_phase_do_not_count_as_learning():
    # flat until the decay, then a drop: a plateau that the decay improves is converged
    table = check_health(history(fvu=lambda t: np.where(t < 0.82, 0.02, 0.01)))
    assert checks(table)["converged"]


def test_the_plateau_test_reads_the_interval_means_when_the_history_has_them():
    rng = np.random.default_rng(0)
    noisy = history(fvu=lambda t: 0.01 * (1 + 0.3 * rng.standard_normal(t.shape)))  # flat, noisy batches
    noisy["fvu_mean"] = 0.01
    table = check_health(noisy).set_index("check")
    assert table.loc["converged", "passed"] and table.loc["converged", "value"] == 0.0
    assert "fvu_mean" in table.loc["converged", "detail"]
    falling = history(fvu=lambda t: np.full_like(t, 0.01))
    falling["fvu_mean"] = 0.1 * np.exp(-1.5 * falling["step"] / 1000)
    assert not checks(check_health(falling))["converged"]


def test_dead_latents_too_many_or_still_moving():
    many = checks(check_health(history(dead=lambda t: np.full_like(t, 0.8))))
    assert not many["dead_ceiling"] and many["dead_stable"]
    reviving = checks(check_health(history(dead=lambda t: 0.5 - 0.4 * t)))
    assert not reviving["dead_stable"] and reviving["dead_ceiling"]


def test_k_loss_that_does_not_bind_and_a_spread_that_still_grows():
    low = checks(check_health(history(k_hat=lambda t: np.full_like(t, 6.0))))
    assert not low["k_binds"]
    growing = checks(check_health(history(k_hat=lambda t: np.full_like(t, 10.0),
                                          k_std=lambda t: 0.1 * np.exp(5 * t))))
    assert not growing["k_spread_stable"] and growing["k_binds"]


def test_a_large_fvu_at_initialisation_is_not_divergence():
    table = check_health(history(fvu=lambda t: np.where(t < 0.02, 6.5, 0.01)))
    assert checks(table)["finite"]


def test_divergence_and_non_finite_losses_fail():
    assert not checks(check_health(history(fvu=lambda t: np.where(t > 0.5, 5.0, 0.01))))["finite"]
    h = history()
    h.loc[3, "loss"] = np.nan
    assert not checks(check_health(h))["finite"]


def test_thresholds_are_configurable_and_reported():
    h = history(dead=lambda t: np.full_like(t, 0.6))
    assert not is_healthy(check_health(h))
    lenient = check_health(h, HealthCriteria(max_dead_fraction=0.7))
    assert is_healthy(lenient)
    assert lenient.set_index("check").loc["dead_ceiling", "threshold"] == "≤ 0.7"


def test_report_summary_and_verdict():
    report = health_report({"good": history(), "bad": history(dead=lambda t: np.full_like(t, 0.9))})
    summary = health_summary(report).set_index("model")
    assert summary.loc["good", "healthy"] and not summary.loc["bad", "healthy"]
    assert summary.loc["bad", "failed"] == "dead_ceiling"
    assert verdict([True, True]) == "conclusive" and verdict([True, False]) == "inconclusive"
    assert verdict([]) == "inconclusive"
    assert verdict([True, True], seeds=1) == "inconclusive" and verdict([True], seeds=3) == "conclusive"


def test_missing_columns_and_short_histories_are_named():
    with pytest.raises(ValueError, match="dead_fraction"):
        check_health(history().drop(columns="dead_fraction"))
    with pytest.raises(ValueError, match="at least 2"):
        check_health(history().iloc[:1])


def test_health_of_a_real_short_run_reads_the_trainer_history():
    from builders import gaussian

    from softsae_lib.saes import make_sae
    from softsae_lib.training import TrainConfig, train_sae

    x = gaussian(2048, 16, seed=1)
    model = make_sae("soft", d_model=16, dict_size=32, k=4, seed=0, hard_phase_fraction=0.1)
    res = train_sae(model, x, TrainConfig(steps=60, batch_size=128, lr=3e-3, warmup_steps=5, decay_start=48,
                                          log_every=2, progress=False))
    table = check_health(res.history)
    assert {"k_binds", "k_spread_stable"} <= set(table["check"])
    assert table["value"].notna().all()


def test_the_plateau_test_prefers_the_heldout_fvu_over_training_batches():
    # Training batches still improve 25% across the window (memorised rows), held-out rows are flat:
    memorising = history(fvu=lambda t: 0.1 * np.exp(-1.5 * t))
    memorising["fvu_mean"] = memorising["fvu_batch"]
    assert not checks(check_health(memorising))["converged"]
    memorising["fvu_heldout"] = np.where(memorising["step"] >= 500, 0.05, np.nan)  # logged from mid-run
    table = check_health(memorising).set_index("check")
    assert table.loc["converged", "passed"] and "fvu_heldout" in table.loc["converged", "detail"]
    # ... and a held-out FVU that still falls fails, however flat the training batches are
    learning = history(fvu=lambda t: np.full_like(t, 0.01))
    learning["fvu_heldout"] = 0.1 * np.exp(-1.5 * learning["step"] / 1000)
    assert not checks(check_health(learning))["converged"]
    # a held-out column with gaps in the window is not read (the interval means are)
    gaps = memorising.copy()
    gaps.loc[gaps.index[-30], "fvu_heldout"] = np.nan
    assert "fvu_mean" in check_health(gaps).set_index("check").loc["converged", "detail"]
