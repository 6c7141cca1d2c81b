"""softsae_lib.experiments.replicates: matched training with SoftSAE seeds, health tables and verdicts,
explanation lengths, per-seed frames."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from softsae_lib.experiments.replicates import (
    data_passes,
    explanation_lengths,
    explanation_test,
    health_tables,
    model_label,
    per_seed_associations,
    report_health,
    seed_frames,
    stacked_histories,
    train_matched_seeds,
    verdicts,
)
from softsae_lib.profiles import get_profile

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def runs():
    g = torch.Generator().manual_seed(0)
    basis = torch.randn(6, 16, generator=g)
    x = torch.randn(1600, 6, generator=g).relu() @ basis
    p = get_profile("04_vit", "smoke").replace(dict_size=32, k=4, steps=60, batch_size=128, progress=False)
    logs = []
    out = train_matched_seeds(x[:1200], x[1200:], p, ks=(3, 4), claim_k=4, seeds=(2, 0, 1),
                              baselines=("topk",), workers=1, log=logs.append, seed_baselines=("topk",))
    return out, x[1200:], logs


def test_grid_seeds_and_matching(runs):
    out, _, logs = runs
    assert list(out.grid) == [3, 4] and all(list(m) == ["soft", "topk"] for m in out.grid.values())
    assert list(out.seeds) == [0, 2, 1] and out.seeds[0] is out.grid[4]["soft"]  # own seed first, no retrain
    for models in out.grid.values():
        assert models["topk"].model.config.k == max(1, round(models["soft"].metrics["l0"]["mean"]))
    assert len(logs) == 2
    # different seeds give different SoftSAEs
    assert not torch.equal(out.seeds[0].model.W_dec, out.seeds[2].model.W_dec)
    labels = list(out.histories())
    assert labels == ["soft k=3 s0", "topk k=3 s0", "soft k=4 s0", "topk k=4 s0", "soft k=4 s2",
                      "soft k=4 s1", "topk k=4 s2", "topk k=4 s1"]
    # TopK again for the further seeds, at the anchor's matched budget of claim_k, with its own weights
    topks = out.seed_models("topk")
    assert list(topks) == [0, 2, 1] and topks[0] is out.grid[4]["topk"]
    assert {m.model.config.k for m in topks.values()} == {out.grid[4]["topk"].model.config.k}
    assert not torch.equal(topks[0].model.W_dec, topks[2].model.W_dec)
    assert out.seed_models("soft") == out.seeds
    with pytest.raises(ValueError, match="claim_k"):
        train_matched_seeds(None, None, get_profile("04_vit", "smoke"), ks=(3,), claim_k=4, seeds=(0,))
    with pytest.raises(ValueError, match="seed_baselines"):
        train_matched_seeds(None, None, get_profile("04_vit", "smoke"), ks=(4,), claim_k=4, seeds=(0,),
                            baselines=("topk",), seed_baselines=("batch_topk",))


def test_health_tables_and_verdicts(runs):
    out, _, _ = runs
    report, summary = health_tables(out.histories())
    assert list(summary["model"]) == list(out.histories())
    assert {"converged", "dead_ceiling", "k_binds"} <= set(summary.columns)
    assert summary.loc[summary["model"] == "topk k=3 s0", "k_binds"].isna().all()  # no k̂ for TopK
    fake = pd.DataFrame({"model": ["soft k=4 s0", "soft k=4 s1", "topk k=4 s0"],
                         "healthy": [True, True, False]})
    assert verdicts(fake, {"x": ["soft k=4 s0", "soft k=4 s1"], "y": ["soft k=4 s0", "topk k=4 s0"]}) == {
        "x": "conclusive", "y": "inconclusive"}
    # one seed is not a result, healthy or not
    assert verdicts(fake, {"z": ["soft k=4 s0"]}) == {"z": "inconclusive"}
    with pytest.raises(KeyError, match="'c'"):
        verdicts(fake, {"x": ["c"]})
    assert model_label("soft", 4, 1) == "soft k=4 s1"
    assert data_passes(10, 64, 320) == {"samples_seen": 640, "train_samples": 320, "epochs": 2.0}


def test_explanation_lengths_and_seed_frames(runs):
    out, x_test, _ = runs
    topk = out.grid[4]["topk"].model
    atoms, info = explanation_lengths(topk, x_test, budget=4, max_atoms=8)
    assert atoms.shape == (len(x_test),) and atoms.min() >= 0 and atoms.max() <= 9
    # the default tolerance is the median error at the budget: about half the samples need ≤ 4 atoms
    assert 0.4 <= (atoms <= 4).mean() <= 0.7 and info["tolerance"] == info["rel_error_at_budget"]
    loose, info_loose = explanation_lengths(topk, x_test, budget=4, max_atoms=8, tolerance=0.9)
    assert (loose <= atoms).all() and info_loose["tolerance_rule"] == "fixed"
    rows = np.arange(0, len(x_test), 2)
    frames = seed_frames(out.seeds, rows, atoms=atoms[rows], doc=rows % 12)
    assert set(frames) == {0, 1, 2} and len(frames[1]) == len(rows)
    assert np.allclose(frames[2]["soft_k_hat"], out.seeds[2].per_sample["k_hat"].numpy()[rows])
    table = per_seed_associations(frames, "soft_k_hat", ["atoms"], "doc", n_boot=20)
    assert list(table["seed"]) == [0, 2, 1, "pooled"]
    p = get_profile("04_vit", "smoke").replace(n_boot=20, explain_max_atoms=8)
    direct, _ = explanation_lengths(topk, x_test[rows], budget=topk.config.k, max_atoms=8)
    ex = explanation_test(out.grid[4]["topk"], x_test, rows, out.seeds, rows % 12,
                          {"half": direct / 2, "const": np.ones(len(rows))}, p)
    assert np.array_equal(ex.frames[0]["explanation_length"], direct) and ex.info["n"] == len(rows)
    others = ex.others.set_index("kappa")
    assert others.loc["half", "spearman"] == pytest.approx(1.0) and "constant" in others.loc["const", "note"]
    assert list(ex.per_seed["seed"]) == [0, 2, 1, "pooled"]
    # one TopK dictionary per seed: seed s's k̂ meets the lengths on seed s's dictionary
    paired = explanation_test(out.seed_models("topk"), x_test, rows, out.seeds, rows % 12, {}, p)
    own, _ = explanation_lengths(out.seed_models("topk")[2].model, x_test[rows], budget=topk.config.k,
                                 max_atoms=8)
    assert np.array_equal(paired.frames[2]["explanation_length"], own)
    assert np.array_equal(paired.frames[0]["explanation_length"], direct)
    assert not np.array_equal(own, direct) and set(paired.info["per_seed"]) == {0, 1, 2}
    with pytest.raises(ValueError, match="TopK models for seeds"):
        explanation_test({0: out.grid[4]["topk"]}, x_test, rows, out.seeds, rows % 12, {}, p)


def test_report_health_prints_the_table_and_saves_the_figure(runs, tmp_path, capsys):
    out, _, _ = runs
    report, summary, fig = report_health(out.histories(), "t", tmp_path / "curves.png")
    assert "dead_ceiling" in capsys.readouterr().out and (tmp_path / "curves.png").stat().st_size > 1000
    assert len(summary) == 8 and set(report["model"]) == set(summary["model"])
    long = stacked_histories(out.histories())
    assert list(long.columns[:2]) == ["model", "step"]
    assert len(long) == sum(map(len, out.histories().values()))
