"""The command-line demo (what `make reproduce` runs until the notebooks land), on the smoke profile."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

from softsae_lib.__main__ import main
from softsae_lib.io import load_sae
from softsae_lib.profiles import get_profile


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("results")
    assert main(["demo", "--profile", "smoke", "--out", str(out)]) == 0
    return out / "smoke" / "superposition"


def test_demo_writes_metrics_with_provenance(demo_dir):
    metrics = json.loads((demo_dir / "metrics.json").read_text())
    assert metrics["params"] == get_profile("superposition", "smoke")
    prov = metrics["provenance"]
    assert prov["versions"]["torch"] == torch.__version__
    assert "git_sha" in prov
    assert set(metrics["models"]) == {"soft", "topk", "batch_topk"}


def test_demo_metrics_are_sane(demo_dir):
    p = get_profile("superposition", "smoke")
    models = json.loads((demo_dir / "metrics.json").read_text())["models"]
    for m in models.values():
        assert 0.0 < m["fvu"] < 0.9  # trained models explain a good part of the variance
        assert 0.0 <= m["dead_fraction"] <= 1.0
    assert models["topk"]["l0"]["max"] == p["k"]
    soft = models["soft"]
    assert 1.0 <= soft["k_hat"]["min"] and soft["k_hat"]["max"] <= 2 * p["k"]
    # Hard inference floors k̂, so the realised L0 never exceeds the largest k̂.
    assert soft["l0"]["max"] <= soft["k_hat"]["max"]


def test_demo_per_sample_table_and_saved_models(demo_dir):
    p = get_profile("superposition", "smoke")
    table = pd.read_csv(demo_dir / "per_sample.csv")
    assert len(table) == p["n_test"]
    assert table["true_active"].between(1, p["max_active"]).all()
    assert (table["soft_l0"] <= table["soft_k_hat"].apply(int)).all()
    sae = load_sae(demo_dir / "sae_soft")
    assert sae.config.k == p["k"] and sae.dict_size == p["dict_size"]
    for arch in ("soft", "topk", "batch_topk"):
        assert (demo_dir / f"history_{arch}.csv").is_file()
